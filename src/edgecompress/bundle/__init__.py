"""edgecompress.bundle"""
