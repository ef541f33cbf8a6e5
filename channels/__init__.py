"""Messaging platforms: one file per platform, each implementing bot.channel.Channel."""
