"""edgecompress.export"""
