"""Offline OCR appliance: HunyuanOCR / CPU OCR engines, the image builder, the kiosk UI and the scan folder."""

__version__ = "0.1.0"
