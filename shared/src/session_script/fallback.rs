//! The script built locally when the AI is not configured or fails: deterministic for an
//! ego state and a duration, and valid by the same rules as a model's script.

use super::{Phase, Script, Segment, TARGET_WORDS_PER_MINUTE};
use crate::guidance::theme;

/// The share of the words each phase gets, in percent (sums to 100).
const SHARES: [(Phase, usize); 5] = [
    (Phase::Induction, 20),
    (Phase::Deepening, 25),
    (Phase::Suggestion, 30),
    (Phase::Integration, 15),
    (Phase::Emergence, 10),
];

/// Sentences per phase; `{quality}` and `{image}` come from the ego state's theme.
fn sentences(phase: Phase) -> &'static [&'static str] {
    match phase {
        Phase::Induction => &[
            "Find a comfortable position and let your eyes rest on one point in front of you... or gently close them.",
            "Breathe in slowly through your nose... and let the breath go, a little longer on the way out.",
            "With each breath out, let your shoulders soften and your jaw relax.",
            "Notice the weight of your body, supported and held, with nothing you need to do right now.",
            "Sounds around you can simply come and go, each one helping you settle a little more.",
        ],
        Phase::Deepening => &[
            "Now imagine a staircase of ten soft steps, leading gently down.",
            "With each step down, you drift twice as deep into calm... ten... nine... eight...",
            "Seven... six... five... every muscle loosening, every thought slowing.",
            "Four... three... two... one... resting now in a quiet, safe place inside.",
            "In this place you feel {image}, steady and at ease.",
            "Let the calm spread from your chest to your arms, your hands, all the way to your fingertips.",
        ],
        Phase::Suggestion => &[
            "Here you meet the part of you that holds {quality}.",
            "It has always been with you, and it is ready to help you now.",
            "Let {quality} grow with every breath, filling you the way light fills a room.",
            "When challenges come, you can return to this feeling in a single breath.",
            "You are allowed to trust yourself, to choose calmly, and to act with {quality}.",
            "Picture yourself tomorrow, moving through your day with {quality}, and notice how natural it feels.",
        ],
        Phase::Integration => &[
            "Now let these feelings settle into you, like water soaking into warm earth.",
            "Every part of you is welcome to keep what was useful here.",
            "Each time you take a slow breath, this calm and {quality} can return.",
        ],
        Phase::Emergence => &[
            "In a moment you will return, counting up from one to five.",
            "One... two... feeling energy come back into your body... three... four...",
            "Five... eyes open, fully awake, alert and refreshed, bringing {quality} with you.",
        ],
    }
}

/// A script for this ego state and duration (minutes, 1–60), the same every time.
pub fn fallback_script(ego_state: &str, duration_minutes: u32) -> Script {
    let theme = theme(ego_state);
    let target = (TARGET_WORDS_PER_MINUTE * duration_minutes.max(1)) as usize;
    let mut segments = Vec::with_capacity(SHARES.len());
    for (phase, percent) in SHARES {
        let goal = (target * percent / 100).max(1);
        let lines = sentences(phase);
        let mut text = String::new();
        let mut words = 0;
        // Cycle through the phase's sentences until its share of the words is reached;
        // every phase gets at least one sentence.
        for line in lines.iter().cycle() {
            if words >= goal {
                break;
            }
            let line = line.replace("{quality}", theme.quality).replace("{image}", theme.image);
            words += line.split_whitespace().count();
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&line);
        }
        segments.push(Segment { phase, text });
    }
    Script {
        title: format!("{} ({} min)", theme.title, duration_minutes),
        ego_state: ego_state.to_string(),
        duration_minutes,
        segments,
    }
}
