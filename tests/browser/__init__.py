"""Browser tests: every page in Debian's chromium, on a phone, in Chinese and English."""
