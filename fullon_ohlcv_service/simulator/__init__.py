"""Exchange simulator speaking Kraken and Binance wire formats on loopback."""
