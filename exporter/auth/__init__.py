"""OAuth2 token acquisition with MSAL: providers, persistent token cache, claims decoding."""
