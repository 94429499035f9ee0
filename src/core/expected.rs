//! Expected items (the order-accuracy seed): what a kit, a tray or an assembly step should
//! hold, against what a detection model found. Pure.
//!
//! Names are compared after normalising case, spaces, `_` and `-`. An expected item is
//! found under its own name (`exact`) or under one of its aliases (`alias`). Each detected
//! class is used by one expected item at most; the classes left over are `extra`. An item
//! found in the wrong number is a `quantity_mismatch`; one not found is `missing`.
//! `accuracy_score` is the share of the expected quantity found (an item counts with at
//! most its expected quantity; extras do not lower it), and the order is complete when
//! nothing is missing or mismatched.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedItem {
    pub name: String,
    pub quantity: u32,
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchType {
    Exact,
    Alias,
}

impl MatchType {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchType::Exact => "exact",
            MatchType::Alias => "alias",
        }
    }
}

/// An expected item that was detected (in the right number, or not).
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub name: String,
    pub expected_quantity: u32,
    pub detected_quantity: u32,
    pub match_type: MatchType,
    /// The detected class it was found as, when that is not its own name.
    pub detected_as: Option<String>,
    /// Mean confidence of its detections.
    pub confidence: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Missing {
    pub name: String,
    pub expected_quantity: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Extra {
    pub name: String,
    pub detected_quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    pub total_expected_items: u32,
    pub total_expected_quantity: u32,
    pub matched_items: u32,
    pub matched_quantity: u32,
    pub missing_items: u32,
    pub extra_items: u32,
    pub accuracy_score: f64,
    pub order_complete: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExpectedCheck {
    pub matched: Vec<Found>,
    pub missing: Vec<Missing>,
    pub extra: Vec<Extra>,
    pub quantity_mismatch: Vec<Found>,
    pub summary: Summary,
}

fn normalise(name: &str) -> String {
    let spaced: String = name.trim().chars().map(|c| if c == '_' || c == '-' { ' ' } else { c }).collect();
    spaced.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// Compares `expected` with the detections (class name and confidence each).
pub fn check<'a>(expected: &[ExpectedItem], detected: impl IntoIterator<Item = (&'a str, f32)>) -> ExpectedCheck {
    // Detected classes by normalised name: (name as detected, count, confidence sum).
    let mut classes: BTreeMap<String, (String, u32, f32)> = BTreeMap::new();
    for (name, confidence) in detected {
        let entry = classes.entry(normalise(name)).or_insert_with(|| (name.to_owned(), 0, 0.0));
        entry.1 += 1;
        entry.2 += if confidence.is_finite() { confidence } else { 0.0 };
    }
    let mut result = ExpectedCheck::default();
    for item in expected {
        let own = normalise(&item.name);
        let found = match classes.remove(&own) {
            Some(class) => Some((MatchType::Exact, class)),
            None => item
                .aliases
                .iter()
                .find_map(|alias| classes.remove(&normalise(alias)))
                .map(|class| (MatchType::Alias, class)),
        };
        result.summary.total_expected_items += 1;
        result.summary.total_expected_quantity += item.quantity;
        let Some((match_type, (detected_as, count, confidence_sum))) = found else {
            result.summary.missing_items += 1;
            result.missing.push(Missing { name: item.name.clone(), expected_quantity: item.quantity });
            continue;
        };
        let found = Found {
            name: item.name.clone(),
            expected_quantity: item.quantity,
            detected_quantity: count,
            match_type,
            detected_as: (match_type == MatchType::Alias).then_some(detected_as),
            confidence: confidence_sum / count as f32,
        };
        result.summary.matched_quantity += count.min(item.quantity);
        if count == item.quantity {
            result.summary.matched_items += 1;
            result.matched.push(found);
        } else {
            result.quantity_mismatch.push(found);
        }
    }
    for (name, count, _) in classes.into_values() {
        result.extra.push(Extra { name, detected_quantity: count });
    }
    let summary = &mut result.summary;
    summary.extra_items = result.extra.len() as u32;
    summary.accuracy_score = if summary.total_expected_quantity == 0 {
        1.0
    } else {
        (100.0 * f64::from(summary.matched_quantity) / f64::from(summary.total_expected_quantity)).round() / 100.0
    };
    summary.order_complete = result.missing.is_empty() && result.quantity_mismatch.is_empty();
    result
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    fn item(name: &str, quantity: u32, aliases: &[&str]) -> ExpectedItem {
        ExpectedItem { name: name.into(), quantity, aliases: aliases.iter().map(|a| (*a).to_owned()).collect() }
    }

    fn assert_check(expected: &[ExpectedItem], detected: &[(&str, f32)], snapshot: Expect) {
        let result = check(expected, detected.iter().copied());
        let mut out = String::new();
        for f in &result.matched {
            out += &format!(
                "matched {} {}/{} {} {:?} {:.2}\n",
                f.name,
                f.detected_quantity,
                f.expected_quantity,
                f.match_type.as_str(),
                f.detected_as,
                f.confidence
            );
        }
        for f in &result.quantity_mismatch {
            out += &format!(
                "mismatch {} {}/{} {}\n",
                f.name,
                f.detected_quantity,
                f.expected_quantity,
                f.match_type.as_str()
            );
        }
        for m in &result.missing {
            out += &format!("missing {} 0/{}\n", m.name, m.expected_quantity);
        }
        for e in &result.extra {
            out += &format!("extra {} {}\n", e.name, e.detected_quantity);
        }
        out += &format!("{:?}\n", result.summary);
        snapshot.assert_eq(&out);
    }

    #[test]
    fn exact_alias_extra_and_complete() {
        assert_check(
            &[item("M8 bolt", 2, &[]), item("washer", 1, &["flat washer"])],
            &[("m8_bolt", 0.9), ("M8-bolt", 0.8), ("Flat Washer", 0.7), ("cable tie", 0.6)],
            expect![[r#"
                matched M8 bolt 2/2 exact None 0.85
                matched washer 1/1 alias Some("Flat Washer") 0.70
                extra cable tie 1
                Summary { total_expected_items: 2, total_expected_quantity: 3, matched_items: 2, matched_quantity: 3, missing_items: 0, extra_items: 1, accuracy_score: 1.0, order_complete: true }
            "#]],
        );
    }

    #[test]
    fn missing_and_wrong_quantities_lower_the_score() {
        assert_check(
            &[item("bolt", 4, &[]), item("nut", 2, &[]), item("washer", 3, &[])],
            &[("bolt", 0.9), ("bolt", 0.9), ("bolt", 0.9), ("nut", 0.8), ("nut", 0.8), ("nut", 0.8)],
            expect![[r#"
                mismatch bolt 3/4 exact
                mismatch nut 3/2 exact
                missing washer 0/3
                Summary { total_expected_items: 3, total_expected_quantity: 9, matched_items: 0, matched_quantity: 5, missing_items: 1, extra_items: 0, accuracy_score: 0.56, order_complete: false }
            "#]],
        );
        // Nothing expected, nothing found: complete.
        assert_check(
            &[],
            &[],
            expect![[r#"
            Summary { total_expected_items: 0, total_expected_quantity: 0, matched_items: 0, matched_quantity: 0, missing_items: 0, extra_items: 0, accuracy_score: 1.0, order_complete: true }
        "#]],
        );
    }
}
