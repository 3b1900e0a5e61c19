"""Prediction: AOI -> windows, blended sliding-window inference, streaming COG output."""
