"""The lab oracle: durable requests out, validated results in (CLI files, inbox drops, HTTP API)."""
