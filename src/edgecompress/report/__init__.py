"""edgecompress.report"""
