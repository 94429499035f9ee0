//! PatchCore anomaly fitting, the pure parts (Roth et al., "Towards Total Recall in
//! Industrial Anomaly Detection", 2022): the memory bank's coreset, the decision thresholds
//! from the fit set's scores, and the image AUROC of a held-out set.
//!
//! A patch's anomaly score is its distance to the nearest patch feature of the memory bank
//! (the normal images' patches); an image's score is its largest patch score. The bank is
//! a greedy k-center coreset of all normal patches: each pick is the patch farthest from
//! those picked so far, so a small bank still covers every kind of normal patch.

/// Picks `count` rows of `features` (row-major, `dim` values per row) by greedy k-center
/// selection, starting from row 0. Returns their indices in pick order. Takes
/// `count × rows × dim` multiply-adds, which on a large fit is minutes: `keep_going` is
/// asked every [`PICKS_PER_CHECK`] picks, and `None` means it said stop.
pub fn greedy_coreset(
    features: &[f32],
    dim: usize,
    count: usize,
    keep_going: &mut dyn FnMut() -> bool,
) -> Option<Vec<usize>> {
    let rows = features.len().checked_div(dim).unwrap_or(0);
    let count = count.min(rows);
    if count == 0 {
        return Some(Vec::new());
    }
    let row = |i: usize| &features[i * dim..(i + 1) * dim];
    // Squared distance of each row to its nearest pick so far.
    let mut nearest = vec![f32::INFINITY; rows];
    let mut picks = Vec::with_capacity(count);
    let mut next = 0;
    for n in 0..count {
        if n % PICKS_PER_CHECK == PICKS_PER_CHECK - 1 && !keep_going() {
            return None;
        }
        picks.push(next);
        let picked = row(next);
        let mut farthest = (0, f32::NEG_INFINITY);
        for (i, best) in nearest.iter_mut().enumerate() {
            let d: f32 = row(i).iter().zip(picked).map(|(a, b)| (a - b) * (a - b)).sum();
            if d < *best {
                *best = d;
            }
            if *best > farthest.1 {
                farthest = (i, *best);
            }
        }
        next = farthest.0;
    }
    Some(picks)
}

/// How many coreset picks go between two `keep_going` calls.
pub const PICKS_PER_CHECK: usize = 64;

/// The anomaly rule's thresholds from the scores of normal images that are not in the bank
/// (the calibration split of the fit set): `pass` is the mean plus three standard
/// deviations, and at least the highest calibration score, so every calibration image
/// passes; `fail` lies as far again above it. Between them a part is uncertain. `None`
/// without scores.
pub fn thresholds(calibration: &[f32]) -> Option<(f32, f32)> {
    let finite: Vec<f64> = calibration.iter().filter(|s| s.is_finite()).map(|s| f64::from(*s)).collect();
    if finite.is_empty() {
        return None;
    }
    let n = finite.len() as f64;
    let mean = finite.iter().sum::<f64>() / n;
    let std = (finite.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pass = (mean + 3.0 * std).max(max);
    // A bank that reproduces every calibration patch exactly would give 0 and 0.
    let spread = (pass - mean).max(pass.abs() * 0.05).max(1e-6);
    Some((pass as f32, (pass + spread) as f32))
}

/// Image AUROC: the probability that an anomalous image scores above a normal one (ties
/// count half). `None` unless both sets have scores.
pub fn auroc(normal: &[f32], anomalous: &[f32]) -> Option<f64> {
    if normal.is_empty() || anomalous.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for a in anomalous {
        for n in normal {
            wins += match a.total_cmp(n) {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Equal => 0.5,
                std::cmp::Ordering::Less => 0.0,
            };
        }
    }
    Some(wins / (normal.len() * anomalous.len()) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coreset_covers_every_cluster_before_repeating_one() {
        // Three tight clusters of 2-D points, the first much larger than the others.
        let mut points = Vec::new();
        for i in 0..50 {
            points.extend([0.0 + i as f32 * 0.001, 0.0]);
        }
        points.extend([10.0, 10.0, 10.01, 10.0, -10.0, 5.0]);
        let picks = greedy_coreset(&points, 2, 3, &mut || true).unwrap();
        let clusters: Vec<i32> = picks.iter().map(|&i| points[i * 2].round() as i32).collect();
        assert_eq!(clusters, [0, 10, -10], "{picks:?}");
        assert_eq!(greedy_coreset(&points, 2, 1000, &mut || true).map(|p| p.len()), Some(53));
        assert_eq!(greedy_coreset(&[], 2, 3, &mut || true), Some(Vec::new()));
    }

    #[test]
    fn a_long_coreset_asks_whether_to_go_on() {
        let points: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let mut asked = 0;
        let picks = greedy_coreset(&points, 1, 200, &mut || {
            asked += 1;
            true
        });
        assert_eq!((picks.map(|p| p.len()), asked), (Some(200), 200 / PICKS_PER_CHECK));
        let mut asked = 0;
        let stopped = greedy_coreset(&points, 1, 200, &mut || {
            asked += 1;
            asked < 2
        });
        assert_eq!((stopped, asked), (None, 2));
    }

    #[test]
    fn thresholds_pass_every_calibration_image_and_leave_a_band() {
        let (pass, fail) = thresholds(&[1.0, 1.2, 0.9, 1.1, 3.0]).unwrap();
        assert!(pass >= 3.0, "{pass}");
        assert!(fail > pass, "{fail} {pass}");
        let (pass, fail) = thresholds(&[2.0, 2.0]).unwrap();
        assert!(pass == 2.0 && fail > 2.0, "{pass} {fail}");
        let (pass, fail) = thresholds(&[0.0]).unwrap();
        assert!(pass == 0.0 && fail > 0.0, "{pass} {fail}");
        assert_eq!(thresholds(&[f32::NAN]), None);
        assert_eq!(thresholds(&[]), None);
    }

    #[test]
    fn auroc_ranks_pairs() {
        assert_eq!(auroc(&[0.1, 0.2], &[0.3, 0.4]), Some(1.0));
        assert_eq!(auroc(&[0.3, 0.4], &[0.1, 0.2]), Some(0.0));
        assert_eq!(auroc(&[0.1, 0.3], &[0.2, 0.3]), Some(0.625));
        assert_eq!(auroc(&[], &[0.2]), None);
    }
}
