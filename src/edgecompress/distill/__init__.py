"""edgecompress.distill"""
