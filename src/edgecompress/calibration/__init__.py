"""edgecompress.calibration"""
