"""edgecompress.pipeline"""
