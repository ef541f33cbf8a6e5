"""The one small error hierarchy of Knowbot."""


class KnowbotError(Exception):
    """Base of every error Knowbot raises on purpose."""

    user_message = "Sorry, something went wrong while handling your message."


class ConfigError(KnowbotError):
    """A setting is missing or invalid."""


class StorageError(KnowbotError):
    """The database could not be read or written."""


class LLMError(KnowbotError):
    """Every configured model provider failed."""

    user_message = (
        "Sorry, the language model is not answering right now. Please try again in a minute."
    )


class ToolError(KnowbotError):
    """A tool (plugin) failed; the message goes back to the model as the tool's result."""


class CommandError(KnowbotError):
    """A command was used wrongly; the message is shown to the user as is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.user_message = message


class RateLimited(KnowbotError):
    """A user sent too many messages too quickly."""

    user_message = "You are sending messages faster than I can answer. Please wait a moment."


class ChannelSendError(KnowbotError):
    """A reply could not be delivered through a channel.

    `retryable` says whether sending the same reply later may work (a network failure, a 5xx,
    a rate limit), as opposed to never (the chat is gone, the bot was blocked).
    """

    def __init__(self, message: str, *, retryable: bool = True, sent_parts: int = 0) -> None:
        super().__init__(message)
        self.retryable = retryable
        # A reply split into several platform messages: how many went out before the failure
        # (counted from the first part), so a retry resumes there instead of repeating them.
        self.sent_parts = sent_parts


class IngestError(KnowbotError):
    """A document could not be ingested; the message says what was wrong and what is accepted."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.user_message = message
