"""edgecompress.devices"""
