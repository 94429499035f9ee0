//! Expected items (the order-accuracy seed): what a kit, a tray or an assembly step should
//! hold, against what a detection model found. Pure.
//!
//! Names are compared after normalising case, spaces, `_` and `-`. An expected item is
//! found under its own name and under its aliases, and its detected quantity sums them all;
//! its `match_type` is `exact` when its own name was detected, else `alias`, and
//! `detected_as` lists the aliases it was found under. Each detected class is used by one
//! expected item at most; the classes left over are `extra`. An item
//! found in the wrong number is a `quantity_mismatch`; one not found is `missing`.
//! `accuracy_score` is the share of the expected quantity found (an item counts with at
//! most its expected quantity; extras do not lower it), and the order is complete when
//! nothing is missing or mismatched.

use std::collections::BTreeMap;

use crate::core::decision::{Decision, Verdict};

#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedItem {
    pub name: String,
    pub quantity: u32,
    pub aliases: Vec<String>,
}

/// What an inspection was asked to find: a recipe's items, or a list given with the trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    /// The recipe the items came from, if any.
    pub recipe: Option<String>,
    pub items: Vec<ExpectedItem>,
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
    /// The aliases it was detected as (comma-separated), if any.
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
        // Detections under the item's own name and under each alias all count towards it.
        let own = classes.remove(&normalise(&item.name));
        let aliased: Vec<(String, u32, f32)> =
            item.aliases.iter().filter_map(|alias| classes.remove(&normalise(alias))).collect();
        result.summary.total_expected_items += 1;
        result.summary.total_expected_quantity += item.quantity;
        let count: u32 = own.iter().chain(&aliased).map(|(_, n, _)| n).sum();
        if count == 0 {
            result.summary.missing_items += 1;
            result.missing.push(Missing { name: item.name.clone(), expected_quantity: item.quantity });
            continue;
        }
        let confidence_sum: f32 = own.iter().chain(&aliased).map(|(_, _, c)| c).sum();
        let detected_as = aliased.iter().map(|(name, _, _)| name.as_str()).collect::<Vec<_>>().join(", ");
        let found = Found {
            name: item.name.clone(),
            expected_quantity: item.quantity,
            detected_quantity: count,
            match_type: if own.is_some() { MatchType::Exact } else { MatchType::Alias },
            detected_as: (!detected_as.is_empty()).then_some(detected_as),
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

/// Most items one list may hold, and most of one item.
pub const MAX_ITEMS: usize = 100;
pub const MAX_QUANTITY: u32 = 10_000;

/// Checks a list before it is used: 1..=100 items, names and aliases 1..=100 characters,
/// quantities 1..=10000, and no name or alias that two items share (after normalising).
/// The error names the offending item.
pub fn validate(items: &[ExpectedItem]) -> Result<(), String> {
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(format!("must list 1 to {MAX_ITEMS} items"));
    }
    let mut seen = BTreeMap::new();
    for (index, item) in items.iter().enumerate() {
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(format!("item {index} ({:?}): quantity must be between 1 and {MAX_QUANTITY}", item.name));
        }
        for name in std::iter::once(&item.name).chain(&item.aliases) {
            let key = normalise(name);
            if key.is_empty() || name.chars().count() > 100 {
                return Err(format!("item {index}: names and aliases must be 1 to 100 characters"));
            }
            if let Some(other) = seen.insert(key, index)
                && other != index
            {
                return Err(format!(
                    "item {index} ({:?}): {name:?} is already item {other}'s name or alias",
                    item.name
                ));
            }
        }
    }
    Ok(())
}

/// The verdict once the expected items are checked: an incomplete order fails the part,
/// labelled with its first problem (`missing:<name>`, else `quantity:<name>`), unless the
/// model already failed it for a defect. A complete order leaves the verdict as it was.
pub fn judge(verdict: Verdict, check: &ExpectedCheck) -> Verdict {
    if check.summary.order_complete || verdict.decision == Decision::Fail {
        return verdict;
    }
    let label = match (check.missing.first(), check.quantity_mismatch.first()) {
        (Some(missing), _) => format!("missing:{}", missing.name),
        (None, Some(mismatch)) => format!("quantity:{}", mismatch.name),
        (None, None) => unreachable!("an incomplete order has a missing or mismatched item"),
    };
    Verdict { decision: Decision::Fail, confidence: verdict.confidence, label: Some(label), defects: verdict.defects }
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

    #[test]
    fn lists_are_validated() {
        assert_eq!(validate(&[item("bolt", 4, &["M8 bolt"]), item("nut", 4, &[])]), Ok(()));
        for (items, error) in [
            (vec![], "must list 1 to 100 items"),
            (vec![item("bolt", 0, &[])], "item 0 (\"bolt\"): quantity must be between 1 and 10000"),
            (vec![item(" ", 1, &[])], "item 0: names and aliases must be 1 to 100 characters"),
            (
                vec![item("bolt", 1, &[]), item("nut", 1, &["Bolt"])],
                "item 1 (\"nut\"): \"Bolt\" is already item 0's name or alias",
            ),
        ] {
            assert_eq!(validate(&items).unwrap_err(), error);
        }
    }

    #[test]
    fn an_incomplete_order_fails_a_part_the_model_passed() {
        let passed = Verdict { decision: Decision::Pass, confidence: 0.9, label: None, defects: Vec::new() };
        let items = [item("bolt", 2, &[]), item("nut", 1, &[])];
        let complete = check(&items, [("bolt", 0.9), ("bolt", 0.9), ("nut", 0.8), ("debris", 0.3)]);
        assert_eq!(judge(passed.clone(), &complete), passed);

        let short = check(&items, [("bolt", 0.9), ("nut", 0.8)]);
        let judged = judge(passed.clone(), &short);
        assert_eq!((judged.decision, judged.label.as_deref()), (Decision::Fail, Some("quantity:bolt")));
        let missing = check(&items, [("bolt", 0.9)]);
        assert_eq!(judge(passed, &missing).label.as_deref(), Some("missing:nut"));

        // A defect's failure keeps its own label.
        let defect =
            Verdict { decision: Decision::Fail, confidence: 0.8, label: Some("debris".into()), defects: Vec::new() };
        assert_eq!(judge(defect.clone(), &missing), defect);
        // An uncertain verdict with a short kit fails: the kit is wrong whatever the defect.
        let unsure = Verdict {
            decision: Decision::Uncertain,
            confidence: 0.5,
            label: Some("debris".into()),
            defects: Vec::new(),
        };
        assert_eq!(judge(unsure, &missing).decision, Decision::Fail);
    }
}
