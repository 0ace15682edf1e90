"""Test helpers: tiny model builder, real-server launchers, fake servers."""
