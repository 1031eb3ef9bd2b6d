"""edgecompress.models"""
