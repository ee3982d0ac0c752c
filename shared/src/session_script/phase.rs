use serde::{Deserialize, Serialize};

/// The phases of a session, in the order they happen (the derived `Ord` is that order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Induction,
    Deepening,
    Suggestion,
    Integration,
    Emergence,
}

impl Phase {
    pub const ALL: [Phase; 5] =
        [Phase::Induction, Phase::Deepening, Phase::Suggestion, Phase::Integration, Phase::Emergence];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Induction => "induction",
            Phase::Deepening => "deepening",
            Phase::Suggestion => "suggestion",
            Phase::Integration => "integration",
            Phase::Emergence => "emergence",
        }
    }

    /// A phase name from a client, also in the app's older spellings.
    pub fn parse(name: &str) -> Option<Phase> {
        match name.trim().to_ascii_lowercase().as_str() {
            "induction" | "intro" => Some(Phase::Induction),
            "deepening" | "deepener" => Some(Phase::Deepening),
            "suggestion" | "suggestions" => Some(Phase::Suggestion),
            "integration" => Some(Phase::Integration),
            "emergence" | "awakening" => Some(Phase::Emergence),
            _ => None,
        }
    }

    /// The phase after this one; emergence is the last.
    pub fn next(self) -> Phase {
        match self {
            Phase::Induction => Phase::Deepening,
            Phase::Deepening => Phase::Suggestion,
            Phase::Suggestion => Phase::Integration,
            Phase::Integration | Phase::Emergence => Phase::Emergence,
        }
    }
}
