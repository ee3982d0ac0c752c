//! Every setting of the app, in one place: the Spin application variables, each with its
//! default, whether it is a secret, what it does, and which components read it.
//!
//! Code reads a setting only through its entry here ([`Setting::value`], [`Setting::parse`],
//! …), never by a string name, so a setting is found by its name in this file alone.
//! `spin.toml` (its `[variables]` and each `[component.X.variables]` block) and
//! `docs/configuration.md` are held to this registry by `tests/tests/settings.rs`.
//!
//! A setting that is unset or empty takes its default here, which equals the default in
//! `spin.toml`; a missing required value is a 500 `config_missing` naming the variable,
//! an unparsable one a 500 `config_invalid` (never the value).

use std::str::FromStr;

use crate::{ApiError, Platform};

/// One Spin application variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    /// `None`: required, no default (`required = true` in `spin.toml`).
    pub default: Option<&'static str>,
    /// Marked `secret = true`: never logged, never in an answer.
    pub secret: bool,
    /// What it does, one line.
    pub doc: &'static str,
}

const fn plain(name: &'static str, default: &'static str, doc: &'static str) -> Setting {
    Setting { name, default: Some(default), secret: false, doc }
}

/// Secrets default to empty: "not configured".
const fn secret(name: &'static str, doc: &'static str) -> Setting {
    Setting { name, default: Some(""), secret: true, doc }
}

impl Setting {
    /// The value set for this component, else the default; `None` when both are empty
    /// (an empty value means "not configured").
    pub fn value(&self, platform: &dyn Platform) -> Option<String> {
        platform.variable(self.name).or_else(|| self.default.filter(|d| !d.is_empty()).map(str::to_string))
    }

    /// The value, or a 500 `config_missing` naming the variable.
    pub fn require(&self, platform: &dyn Platform) -> Result<String, ApiError> {
        self.value(platform).ok_or_else(|| ApiError::config_missing(self.name))
    }

    /// The value parsed (a number, a flag); an unparsable value is a configuration error,
    /// not something to guess around.
    pub fn parse<T: FromStr>(&self, platform: &dyn Platform) -> Result<T, ApiError> {
        self.require(platform)?.trim().parse().map_err(|_| self.invalid())
    }

    /// A comma-separated list, trimmed, empties dropped.
    pub fn list(&self, platform: &dyn Platform) -> Vec<String> {
        self.value(platform)
            .map(|raw| raw.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }

    /// The 500 `config_invalid` for this setting: names it, never its value.
    pub fn invalid(&self) -> ApiError {
        ApiError::new(500, "config_invalid", format!("The server setting `{}` has an invalid value.", self.name))
    }
}

// ---- The database and the manifest ----------------------------------------------------

pub const DATABASE_URL: Setting = Setting {
    name: "database_url",
    default: None,
    secret: true,
    doc: "Postgres address for `spin:postgres`: `postgres://user:password@host:port/db`",
};
pub const DB_HOST: Setting =
    plain("db_host", "127.0.0.1:5432", "`host:port` of that Postgres (used in `allowed_outbound_hosts`)");

// ---- Authentication -------------------------------------------------------------------

pub const SUPABASE_JWT_SECRET: Setting =
    secret("supabase_jwt_secret", "The project's JWT secret (HS256 access tokens)");
pub const SUPABASE_JWKS: Setting = plain(
    "supabase_jwks",
    "",
    "Pinned JWKS JSON of the project's ES256/RS256 signing keys (changes need a restart; prefer `supabase_jwks_url`)",
);
pub const SUPABASE_JWKS_URL: Setting = plain(
    "supabase_jwks_url",
    "",
    "The project's JWKS, `https://<ref>.supabase.co/auth/v1/.well-known/jwks.json`: fetched, cached in Postgres for \
     every instance, rotations picked up without a restart; empty: not fetched",
);
pub const SUPABASE_JWKS_HOST: Setting = plain(
    "supabase_jwks_host",
    "https://*.supabase.co",
    "`scheme://host[:port]` of `supabase_jwks_url` (used in `allowed_outbound_hosts`; set it for a self-hosted \
     Supabase)",
);
/// Supabase's own edge caches its JWKS for about ten minutes, and publishes a standby key
/// well before it signs with it.
pub const JWKS_MAX_AGE_SECONDS: Setting =
    plain("jwks_max_age_seconds", "600", "A fetched JWKS older than this is fetched again");
pub const JWKS_MIN_REFRESH_SECONDS: Setting = plain(
    "jwks_min_refresh_seconds",
    "30",
    "At most one JWKS fetch per this many seconds, across all instances, however many unknown `kid`s arrive",
);
pub const SUPABASE_SECRET_KEYS: Setting = secret(
    "supabase_secret_keys",
    "The project's secret API keys (`sb_secret_…`), comma separated (two during a rotation): what service-only \
     endpoints accept, beside the legacy `service_role` JWT",
);
pub const JWT_AUDIENCE: Setting = plain("jwt_audience", "authenticated", "Expected `aud` of access tokens");
pub const ANONYMOUS_PAID_ACCESS: Setting = plain(
    "anonymous_paid_access",
    "false",
    "`true` lets anonymous sign-ins (`is_anonymous`) make paid upstream calls and purchases",
);

// ---- Browsers -------------------------------------------------------------------------

pub const ALLOWED_ORIGINS: Setting = plain("allowed_origins", "*", "CORS origins, comma separated, or `*`");
pub const APP_ORIGINS: Setting =
    plain("app_origins", "http://localhost:5173", "Origins allowed in checkout success/cancel URLs, comma separated");

// ---- Stripe ---------------------------------------------------------------------------

pub const STRIPE_SECRET_KEY: Setting = secret("stripe_secret_key", "Stripe API key");
pub const STRIPE_WEBHOOK_SECRETS: Setting =
    secret("stripe_webhook_secrets", "Stripe webhook signing secrets, comma separated (several during a rotation)");
pub const STRIPE_API_BASE: Setting = plain("stripe_api_base", "https://api.stripe.com", "Stripe API base URL");
pub const STRIPE_PRICE_MYSTIC_SUBSCRIPTION: Setting = plain(
    "stripe_price_mystic_subscription",
    "",
    "Optional: overrides the stored price id (`libero stripe sync`) of the Mystic subscription",
);
pub const STRIPE_PRICE_TOKENS_SMALL: Setting = plain(
    "stripe_price_tokens_small",
    "",
    "Optional: overrides the stored price id (`libero stripe sync`) of tokens-small",
);
pub const STRIPE_PRICE_TOKENS_MEDIUM: Setting = plain(
    "stripe_price_tokens_medium",
    "",
    "Optional: overrides the stored price id (`libero stripe sync`) of tokens-medium",
);
pub const STRIPE_PRICE_TOKENS_LARGE: Setting = plain(
    "stripe_price_tokens_large",
    "",
    "Optional: overrides the stored price id (`libero stripe sync`) of tokens-large",
);
/// A success page that polls every few seconds while a payment is `processing` stays far
/// below it.
pub const STRIPE_SESSION_STATUS_PER_HOUR: Setting = plain(
    "stripe_session_status_per_hour",
    "120",
    "`GET /stripe-checkout/session/{id}` calls per user per clock hour (429 with `Retry-After` beyond)",
);

// ---- OpenAI ---------------------------------------------------------------------------

pub const OPENAI_API_KEY: Setting = secret("openai_api_key", "OpenAI API key; empty: the local fallbacks answer");
pub const OPENAI_BASE_URL: Setting = plain(
    "openai_base_url",
    "https://api.openai.com",
    "OpenAI-compatible API base URL (without `/v1`): any OpenAI-compatible gateway",
);
pub const OPENAI_CHAT_MODEL: Setting =
    plain("openai_chat_model", "gpt-4o-mini", "Model for `chatgpt-chat` and `ai-hypnosis`");
pub const OPENAI_SCRIPT_MODEL: Setting = plain("openai_script_model", "gpt-4o-mini", "Model for `generate-script`");
pub const OPENAI_TTS_MODEL: Setting = plain("openai_tts_model", "gpt-4o-mini-tts", "Default model for `tts`");
pub const OPENAI_TTS_VOICES: Setting = plain(
    "openai_tts_voices",
    "alloy,ash,ballad,coral,echo,fable,nova,onyx,sage,shimmer,verse",
    "Voices `tts` accepts, comma separated",
);
/// `openai_tts_model`, the operator's default, is always allowed besides these.
pub const OPENAI_TTS_MODELS: Setting = plain(
    "openai_tts_models",
    "gpt-4o-mini-tts,tts-1,tts-1-hd",
    "Models `tts` accepts besides `openai_tts_model`, comma separated",
);
/// OpenAI's list prices: tts-1 $15 and tts-1-hd $30 a million characters; gpt-4o-mini-tts
/// about $12 by its audio tokens.
pub const OPENAI_TTS_MODEL_WEIGHTS: Setting = plain(
    "openai_tts_model_weights",
    "gpt-4o-mini-tts:1,tts-1:1,tts-1-hd:2",
    "What a `tts` character of each model counts for (`name:weight`, comma separated); an unlisted model counts as \
     the dearest",
);
pub const OPENAI_TRANSCRIBE_MODEL: Setting =
    plain("openai_transcribe_model", "gpt-4o-mini-transcribe", "OpenAI model for `transcribe`");

// ---- ElevenLabs -----------------------------------------------------------------------

pub const ELEVENLABS_API_KEY: Setting = secret("elevenlabs_api_key", "ElevenLabs API key; empty: not configured");
pub const ELEVENLABS_BASE_URL: Setting =
    plain("elevenlabs_base_url", "https://api.elevenlabs.io", "ElevenLabs API base URL");
/// ElevenLabs' "Rachel", the voice its docs use.
pub const ELEVENLABS_DEFAULT_VOICE_ID: Setting = plain(
    "elevenlabs_default_voice_id",
    "21m00Tcm4TlvDq8ikWAM",
    "ElevenLabs voice of the `tts` fallback, and the premium voice offered by default (a stock voice)",
);
pub const ELEVENLABS_MODEL_ID: Setting =
    plain("elevenlabs_model_id", "eleven_multilingual_v2", "Default ElevenLabs speech model");
pub const ELEVENLABS_VOICE_IDS: Setting = plain(
    "elevenlabs_voice_ids",
    "",
    "Premium voices offered besides `elevenlabs_default_voice_id`, comma separated; any other voice id is a 400",
);
/// About 100 minutes of speech.
pub const ELEVENLABS_MYSTIC_CHARS_PER_MONTH: Setting = plain(
    "elevenlabs_mystic_chars_per_month",
    "100000",
    "Premium voice characters per user per calendar month (UTC) on plan `mystic`",
);
pub const ELEVENLABS_FREE_FALLBACK_CHARS_PER_MONTH: Setting = plain(
    "elevenlabs_free_fallback_chars_per_month",
    "100000",
    "Characters per calendar month (UTC), all users together, that `tts` may send to ElevenLabs while OpenAI is \
     unavailable; past it, the browser fallback",
);
pub const ELEVENLABS_STT_MODEL: Setting = plain(
    "elevenlabs_stt_model",
    "scribe_v1",
    "ElevenLabs speech-to-text model for `transcribe` (while OpenAI is unavailable)",
);

// ---- Retries of upstream calls --------------------------------------------------------

/// The retry policy's settings of one upstream (`crate::upstream::retry`).
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    pub max_attempts: Setting,
    pub retry_base_ms: Setting,
    pub retry_max_ms: Setting,
    pub timeout_ms: Setting,
    pub deadline_ms: Setting,
}

// The numbers: 3 attempts; waits of ~0.5 s then ~1 s (each 50–100 % of nominal); a 60 s
// attempt timeout, since a long structured answer can take that long to start streaming;
// 90 s for everything, well within what a browser waits.
pub const OPENAI_RETRY: RetrySettings = RetrySettings {
    max_attempts: plain(
        "openai_max_attempts",
        "3",
        "Attempts per OpenAI call (429, 5xx, timeouts and connection errors are retried), 1 to 10",
    ),
    retry_base_ms: plain(
        "openai_retry_base_ms",
        "500",
        "Backoff before the 2nd OpenAI attempt, doubling after; each wait is 50–100 % of it (jitter)",
    ),
    retry_max_ms: plain(
        "openai_retry_max_ms",
        "8000",
        "Longest wait between OpenAI attempts and the most of a `Retry-After` honoured (longer: give up)",
    ),
    timeout_ms: plain(
        "openai_timeout_ms",
        "60000",
        "One OpenAI attempt: connect, first byte, and each gap between chunks",
    ),
    deadline_ms: plain("openai_deadline_ms", "90000", "All OpenAI attempts and waits of one request together"),
};

pub const ELEVENLABS_RETRY: RetrySettings = RetrySettings {
    max_attempts: plain(
        "elevenlabs_max_attempts",
        "3",
        "Attempts per ElevenLabs call (429, 5xx, timeouts and connection errors are retried), 1 to 10",
    ),
    retry_base_ms: plain(
        "elevenlabs_retry_base_ms",
        "500",
        "Backoff before the 2nd ElevenLabs attempt, doubling after (50–100 % jitter)",
    ),
    retry_max_ms: plain(
        "elevenlabs_retry_max_ms",
        "8000",
        "Longest wait between ElevenLabs attempts and the most of a `Retry-After` honoured",
    ),
    timeout_ms: plain(
        "elevenlabs_timeout_ms",
        "60000",
        "One ElevenLabs attempt: connect, first byte, and each gap between chunks",
    ),
    deadline_ms: plain("elevenlabs_deadline_ms", "90000", "All ElevenLabs attempts and waits of one request together"),
};

// ---- Quotas ---------------------------------------------------------------------------

pub const AI_QUOTA_FREE_PER_HOUR: Setting =
    plain("ai_quota_free_per_hour", "30", "AI and voice calls per user per endpoint per clock hour, plan free");
pub const AI_QUOTA_MYSTIC_PER_HOUR: Setting =
    plain("ai_quota_mystic_per_hour", "300", "AI and voice calls per user per endpoint per clock hour, plan `mystic`");
pub const AI_TOKENS_FREE_PER_HOUR: Setting = plain(
    "ai_tokens_free_per_hour",
    "60000",
    "AI tokens (the upstream's reported `usage`) per user per clock hour for `chatgpt-chat` and `generate-script` \
     together, plan free (429 `quota_exceeded`, `limit_name: ai_tokens`)",
);
pub const AI_TOKENS_MYSTIC_PER_HOUR: Setting =
    plain("ai_tokens_mystic_per_hour", "600000", "The same as `ai_tokens_free_per_hour`, plan `mystic`");
pub const TTS_FREE_CHARS_PER_HOUR: Setting = plain(
    "tts_free_chars_per_hour",
    "20000",
    "Weighted `tts` characters per user per clock hour, plan free (429 `quota_exceeded`, `limit_name: tts_chars`)",
);
pub const TTS_MYSTIC_CHARS_PER_HOUR: Setting =
    plain("tts_mystic_chars_per_hour", "200000", "Weighted `tts` characters per user per clock hour, plan `mystic`");
pub const TRANSCRIBE_FREE_SECONDS_PER_HOUR: Setting = plain(
    "transcribe_free_seconds_per_hour",
    "900",
    "Seconds of audio `transcribe` takes per user per clock hour, plan free (429 `quota_exceeded`, `limit_name: \
     transcribe_seconds`)",
);
pub const TRANSCRIBE_MYSTIC_SECONDS_PER_HOUR: Setting = plain(
    "transcribe_mystic_seconds_per_hour",
    "7200",
    "Seconds of audio `transcribe` takes per user per clock hour, plan `mystic`",
);

// ---- Speech, transcription, insights, reminders ---------------------------------------

pub const TTS_CACHE_MAX_BYTES: Setting =
    plain("tts_cache_max_bytes", "104857600", "Upper bound of the shared `tts` cache, bytes (100 MiB)");
pub const TTS_CACHE_TTL_SECONDS: Setting =
    plain("tts_cache_ttl_seconds", "604800", "How long a cached `tts` answer is served, seconds (7 days)");
/// About a minute of mp3 at 128 kbit/s: the cache is for the short lines an app repeats.
/// With the default bound that is 1 % of the cache, so no few requests can fill it.
pub const TTS_CACHE_MAX_ENTRY_BYTES: Setting = plain(
    "tts_cache_max_entry_bytes",
    "1048576",
    "Largest `tts` answer cached, bytes (1 MiB; larger ones are streamed, not cached)",
);
pub const TRANSCRIBE_MAX_DURATION_SECONDS: Setting = plain(
    "transcribe_max_duration_seconds",
    "300",
    "Longest recording `transcribe` accepts (413 `audio_too_long`), seconds, as measured from the audio; the size \
     bound (25 MB) always holds",
);
/// With a handful of users a percentile says too much about the others.
pub const INSIGHTS_MIN_POPULATION: Setting = plain(
    "insights_min_population",
    "20",
    "`insights` shows no comparison (percentile) while fewer active users than this are counted",
);
pub const VAPID_PRIVATE_KEY: Setting = secret(
    "vapid_private_key",
    "Web Push: the VAPID private key (P-256, base64url; `libero push keys` makes a pair); empty: reminders are off \
     (`/reminders/public-key` answers 503)",
);
pub const VAPID_SUBJECT: Setting = plain(
    "vapid_subject",
    "",
    "Web Push: who sends, as push services ask (`mailto:ops@example.com` or an https URL); required to send",
);
pub const PUSH_EXTRA_ORIGIN: Setting = plain(
    "push_extra_origin",
    "https://fcm.googleapis.com",
    "Web Push: one more push service origin allowed besides the known ones (tests point it at a fake); leave as is \
     in production",
);

/// Every setting, in the order of `spin.toml` and the generated table.
pub const ALL: &[Setting] = &[
    DATABASE_URL,
    DB_HOST,
    SUPABASE_JWT_SECRET,
    SUPABASE_JWKS,
    SUPABASE_JWKS_URL,
    SUPABASE_JWKS_HOST,
    JWKS_MAX_AGE_SECONDS,
    JWKS_MIN_REFRESH_SECONDS,
    SUPABASE_SECRET_KEYS,
    JWT_AUDIENCE,
    ALLOWED_ORIGINS,
    APP_ORIGINS,
    STRIPE_SECRET_KEY,
    STRIPE_WEBHOOK_SECRETS,
    STRIPE_API_BASE,
    STRIPE_PRICE_MYSTIC_SUBSCRIPTION,
    STRIPE_PRICE_TOKENS_SMALL,
    STRIPE_PRICE_TOKENS_MEDIUM,
    STRIPE_PRICE_TOKENS_LARGE,
    STRIPE_SESSION_STATUS_PER_HOUR,
    OPENAI_API_KEY,
    OPENAI_BASE_URL,
    OPENAI_CHAT_MODEL,
    OPENAI_SCRIPT_MODEL,
    OPENAI_TTS_MODEL,
    OPENAI_RETRY.max_attempts,
    OPENAI_RETRY.retry_base_ms,
    OPENAI_RETRY.retry_max_ms,
    OPENAI_RETRY.timeout_ms,
    OPENAI_RETRY.deadline_ms,
    ELEVENLABS_API_KEY,
    ELEVENLABS_BASE_URL,
    ELEVENLABS_DEFAULT_VOICE_ID,
    ELEVENLABS_MODEL_ID,
    ELEVENLABS_RETRY.max_attempts,
    ELEVENLABS_RETRY.retry_base_ms,
    ELEVENLABS_RETRY.retry_max_ms,
    ELEVENLABS_RETRY.timeout_ms,
    ELEVENLABS_RETRY.deadline_ms,
    AI_QUOTA_FREE_PER_HOUR,
    AI_QUOTA_MYSTIC_PER_HOUR,
    AI_TOKENS_FREE_PER_HOUR,
    AI_TOKENS_MYSTIC_PER_HOUR,
    INSIGHTS_MIN_POPULATION,
    TTS_CACHE_MAX_BYTES,
    TTS_CACHE_TTL_SECONDS,
    TTS_CACHE_MAX_ENTRY_BYTES,
    OPENAI_TTS_VOICES,
    OPENAI_TTS_MODELS,
    OPENAI_TTS_MODEL_WEIGHTS,
    TTS_FREE_CHARS_PER_HOUR,
    TTS_MYSTIC_CHARS_PER_HOUR,
    ELEVENLABS_FREE_FALLBACK_CHARS_PER_MONTH,
    ELEVENLABS_VOICE_IDS,
    ELEVENLABS_MYSTIC_CHARS_PER_MONTH,
    ANONYMOUS_PAID_ACCESS,
    OPENAI_TRANSCRIBE_MODEL,
    ELEVENLABS_STT_MODEL,
    TRANSCRIBE_MAX_DURATION_SECONDS,
    TRANSCRIBE_FREE_SECONDS_PER_HOUR,
    TRANSCRIBE_MYSTIC_SECONDS_PER_HOUR,
    VAPID_PRIVATE_KEY,
    VAPID_SUBJECT,
    PUSH_EXTRA_ORIGIN,
];

/// The registry entry named `name`.
pub fn find(name: &str) -> Option<&'static Setting> {
    ALL.iter().find(|s| s.name == name)
}

// ---- Typed reads ----------------------------------------------------------------------

/// The hourly call quota of the AI and voice endpoints (`ai_quota_take`), by plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallQuota {
    pub free_per_hour: i32,
    pub mystic_per_hour: i32,
}

impl CallQuota {
    pub fn from_platform(platform: &dyn Platform) -> Result<CallQuota, ApiError> {
        Ok(CallQuota {
            free_per_hour: AI_QUOTA_FREE_PER_HOUR.parse::<i32>(platform)?.max(0),
            mystic_per_hour: AI_QUOTA_MYSTIC_PER_HOUR.parse::<i32>(platform)?.max(0),
        })
    }
}

// ---- Who reads what -------------------------------------------------------------------

/// Every component: the database and CORS.
const BASE: &[Setting] = &[DATABASE_URL, ALLOWED_ORIGINS];
/// Verifying a user's access token (`crate::auth`).
const USER_AUTH: &[Setting] = &[
    SUPABASE_JWT_SECRET,
    SUPABASE_JWKS,
    SUPABASE_JWKS_URL,
    JWKS_MAX_AGE_SECONDS,
    JWKS_MIN_REFRESH_SECONDS,
    JWT_AUDIENCE,
];
/// A server job's credential (`crate::auth::service`): a secret key, or a `service_role`
/// token verified as [`USER_AUTH`] verifies.
const SERVICE_AUTH: &[Setting] = &[SUPABASE_SECRET_KEYS];
const STRIPE: &[Setting] = &[STRIPE_SECRET_KEY, STRIPE_API_BASE];
const STRIPE_PRICES: &[Setting] = &[
    STRIPE_PRICE_MYSTIC_SUBSCRIPTION,
    STRIPE_PRICE_TOKENS_SMALL,
    STRIPE_PRICE_TOKENS_MEDIUM,
    STRIPE_PRICE_TOKENS_LARGE,
];
/// Every paid upstream call (`crate::quota::take`): the anonymous gate and the call quota.
const PAID_CALLS: &[Setting] = &[ANONYMOUS_PAID_ACCESS, AI_QUOTA_FREE_PER_HOUR, AI_QUOTA_MYSTIC_PER_HOUR];
const AI_TOKENS: &[Setting] = &[AI_TOKENS_FREE_PER_HOUR, AI_TOKENS_MYSTIC_PER_HOUR];
const OPENAI: &[Setting] = &[
    OPENAI_API_KEY,
    OPENAI_BASE_URL,
    OPENAI_RETRY.max_attempts,
    OPENAI_RETRY.retry_base_ms,
    OPENAI_RETRY.retry_max_ms,
    OPENAI_RETRY.timeout_ms,
    OPENAI_RETRY.deadline_ms,
];
const ELEVENLABS: &[Setting] = &[
    ELEVENLABS_API_KEY,
    ELEVENLABS_BASE_URL,
    ELEVENLABS_RETRY.max_attempts,
    ELEVENLABS_RETRY.retry_base_ms,
    ELEVENLABS_RETRY.retry_max_ms,
    ELEVENLABS_RETRY.timeout_ms,
    ELEVENLABS_RETRY.deadline_ms,
];

/// A component of `spin.toml` and the settings it reads, as groups. Its
/// `[component.X.variables]` block must list exactly these.
#[derive(Debug)]
pub struct Component {
    pub name: &'static str,
    pub reads: &'static [&'static [Setting]],
}

impl Component {
    /// The settings it reads, each once, in registry order.
    pub fn settings(&self) -> Vec<&'static Setting> {
        ALL.iter().filter(|s| self.reads.iter().any(|group| group.iter().any(|r| r.name == s.name))).collect()
    }
}

pub const COMPONENTS: &[Component] = &[
    Component { name: "session-complete", reads: &[BASE, USER_AUTH] },
    Component { name: "insights", reads: &[BASE, USER_AUTH, &[INSIGHTS_MIN_POPULATION]] },
    Component {
        name: "stripe-checkout",
        reads: &[
            BASE,
            USER_AUTH,
            STRIPE,
            STRIPE_PRICES,
            &[APP_ORIGINS, ANONYMOUS_PAID_ACCESS, STRIPE_SESSION_STATUS_PER_HOUR],
        ],
    },
    Component { name: "account", reads: &[BASE, USER_AUTH, STRIPE] },
    Component { name: "stripe-webhook", reads: &[BASE, STRIPE, STRIPE_PRICES, &[STRIPE_WEBHOOK_SECRETS]] },
    Component { name: "stripe-reconcile", reads: &[BASE, SERVICE_AUTH, USER_AUTH, STRIPE, STRIPE_PRICES] },
    Component {
        name: "generate-script",
        reads: &[BASE, USER_AUTH, PAID_CALLS, AI_TOKENS, OPENAI, &[OPENAI_SCRIPT_MODEL]],
    },
    Component { name: "chatgpt-chat", reads: &[BASE, USER_AUTH, PAID_CALLS, AI_TOKENS, OPENAI, &[OPENAI_CHAT_MODEL]] },
    Component { name: "ai-hypnosis", reads: &[BASE, USER_AUTH, PAID_CALLS, OPENAI, &[OPENAI_CHAT_MODEL]] },
    Component {
        name: "tts",
        reads: &[
            BASE,
            USER_AUTH,
            PAID_CALLS,
            OPENAI,
            ELEVENLABS,
            &[
                OPENAI_TTS_MODEL,
                OPENAI_TTS_VOICES,
                OPENAI_TTS_MODELS,
                OPENAI_TTS_MODEL_WEIGHTS,
                TTS_FREE_CHARS_PER_HOUR,
                TTS_MYSTIC_CHARS_PER_HOUR,
                TTS_CACHE_MAX_BYTES,
                TTS_CACHE_TTL_SECONDS,
                TTS_CACHE_MAX_ENTRY_BYTES,
                ELEVENLABS_DEFAULT_VOICE_ID,
                ELEVENLABS_MODEL_ID,
                ELEVENLABS_FREE_FALLBACK_CHARS_PER_MONTH,
            ],
        ],
    },
    Component {
        name: "elevenlabs-tts-proxy",
        reads: &[
            BASE,
            USER_AUTH,
            PAID_CALLS,
            ELEVENLABS,
            &[
                ELEVENLABS_DEFAULT_VOICE_ID,
                ELEVENLABS_MODEL_ID,
                ELEVENLABS_VOICE_IDS,
                ELEVENLABS_MYSTIC_CHARS_PER_MONTH,
            ],
        ],
    },
    Component {
        name: "transcribe",
        reads: &[
            BASE,
            USER_AUTH,
            PAID_CALLS,
            OPENAI,
            ELEVENLABS,
            &[
                OPENAI_TRANSCRIBE_MODEL,
                ELEVENLABS_STT_MODEL,
                TRANSCRIBE_MAX_DURATION_SECONDS,
                TRANSCRIBE_FREE_SECONDS_PER_HOUR,
                TRANSCRIBE_MYSTIC_SECONDS_PER_HOUR,
            ],
        ],
    },
    Component {
        name: "reminders",
        reads: &[BASE, USER_AUTH, SERVICE_AUTH, &[VAPID_PRIVATE_KEY, VAPID_SUBJECT, PUSH_EXTRA_ORIGIN]],
    },
];

/// The components that read `setting`, in `spin.toml` order.
pub fn readers(setting: &Setting) -> Vec<&'static str> {
    COMPONENTS.iter().filter(|c| c.settings().iter().any(|s| s.name == setting.name)).map(|c| c.name).collect()
}

/// `docs/configuration.md`, generated from this registry (`tests/tests/settings.rs`
/// checks the file and rewrites it with `LIBERO_BLESS=1`).
pub fn markdown() -> String {
    let mut out = String::from(
        "# Configuration\n\n\
         <!-- Generated from shared/src/settings.rs; do not edit. Regenerate with\n     \
         LIBERO_BLESS=1 cargo test -p libero-tests --test suite -- settings:: -->\n\n\
         Spin application variables (`spin.toml`). Set each as `SPIN_VARIABLE_<NAME>` (upper case) in\n\
         the environment, with `spin up --variable`, or through your platform's variable provider.\n\
         An unset or empty variable takes its default; a secret is never logged or returned. A\n\
         required setting that is missing is a 500 `config_missing` naming the variable, an\n\
         unparsable one a 500 `config_invalid`, never with a value.\n\n\
         | variable | default | secret | what it does | read by |\n\
         |---|---|---|---|---|\n",
    );
    for setting in ALL {
        let default = match setting.default {
            None => "**required**".to_string(),
            Some("") => "\"\"".to_string(),
            Some(d) => format!("`{d}`"),
        };
        let readers = readers(setting);
        let read_by = if readers.is_empty() {
            "`spin.toml` only (`allowed_outbound_hosts`)".to_string()
        } else if readers.len() == COMPONENTS.len() {
            "every component".to_string()
        } else if readers.len() + 2 >= COMPONENTS.len() {
            let others: Vec<String> =
                COMPONENTS.iter().filter(|c| !readers.contains(&c.name)).map(|c| format!("`{}`", c.name)).collect();
            format!("every component but {}", others.join(", "))
        } else {
            readers.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            setting.name,
            default,
            if setting.secret { "yes" } else { "" },
            setting.doc.replace('|', "\\|"),
            read_by
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakePlatform;

    #[test]
    fn names_are_unique_and_lower_case() {
        let mut names: Vec<&str> = ALL.iter().map(|s| s.name).collect();
        assert!(names.iter().all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')));
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "a setting is registered twice");
    }

    #[test]
    fn every_component_reads_only_registered_settings() {
        for component in COMPONENTS {
            for group in component.reads {
                for setting in *group {
                    assert_eq!(find(setting.name), Some(setting), "{}: {} is not in ALL", component.name, setting.name);
                }
            }
        }
    }

    #[test]
    fn reads_fall_back_to_the_default_and_name_the_setting_when_bad() {
        let unset = FakePlatform::with_vars(&[("jwt_audience", "")]);
        assert_eq!(JWT_AUDIENCE.value(&unset).as_deref(), Some("authenticated"));
        assert_eq!(OPENAI_API_KEY.value(&unset), None);
        assert_eq!(DATABASE_URL.require(&unset).unwrap_err().code, "config_missing");
        assert_eq!(CallQuota::from_platform(&unset).unwrap(), CallQuota { free_per_hour: 30, mystic_per_hour: 300 });

        let set = FakePlatform::with_vars(&[("ai_quota_free_per_hour", " -4 "), ("ai_quota_mystic_per_hour", "9")]);
        assert_eq!(CallQuota::from_platform(&set).unwrap(), CallQuota { free_per_hour: 0, mystic_per_hour: 9 });

        let bad = FakePlatform::with_vars(&[("ai_quota_mystic_per_hour", "lots")]);
        let error = CallQuota::from_platform(&bad).unwrap_err();
        assert_eq!((error.status, error.code), (500, "config_invalid"));
        assert!(error.message.contains("ai_quota_mystic_per_hour") && !error.message.contains("lots"));

        let list = FakePlatform::with_vars(&[("supabase_secret_keys", " a, ,b ,")]);
        assert_eq!(SUPABASE_SECRET_KEYS.list(&list), vec!["a", "b"]);
    }
}
