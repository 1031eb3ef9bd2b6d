"""edgecompress.data"""
