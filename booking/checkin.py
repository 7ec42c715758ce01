"""(to be written) Check-in tokens: what a booking's QR code and 8-character code hold."""

from __future__ import annotations
