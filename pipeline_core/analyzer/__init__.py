"""The analyzer: the opening-range breakout strategy (``strategy``) and its stage runner."""
