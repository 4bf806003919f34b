//! [`Status`] as kubectl-style tables: upper-case headers, columns padded to the widest
//! cell, `-` for nothing. Pure.

use super::rows::Status;

/// `42s`, `5m`, `3h`, `2d`: kubectl's coarse ages.
pub fn age(seconds: u64) -> String {
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7_200 => format!("{}m", seconds / 60),
        7_200..172_800 => format!("{}h", seconds / 3_600),
        _ => format!("{}d", seconds / 86_400),
    }
}

fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_owned())
}

fn render(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let last = cells.len().saturating_sub(1);
        let padded: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, cell)| {
                if i == last {
                    cell
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        padded.join("   ").trim_end().to_owned()
    };
    let mut text = line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        text.push('\n');
        text.push_str(&line(row));
    }
    text.push('\n');
    text
}

/// The three tables, separated by blank lines; an empty one says so in one line.
pub fn tables(status: &Status) -> String {
    let mut text = String::new();
    if status.nodes.is_empty() {
        text.push_str("No node carries Spot Guard state.\n");
    } else {
        let rows = status
            .nodes
            .iter()
            .map(|row| {
                vec![
                    row.node.clone(),
                    or_dash(row.instance.clone()),
                    row.step.text().to_owned(),
                    or_dash(row.replacement_asg.clone()),
                    or_dash(row.replacement_node.map(str::to_owned)),
                    or_dash(row.age_seconds.map(age)),
                    or_dash(row.fallback_reason.map(str::to_owned)),
                ]
            })
            .collect();
        text.push_str(&render(
            &[
                "NODE",
                "INSTANCE",
                "STEP",
                "REPLACEMENT ASG",
                "NEW NODE",
                "AGE",
                "FALLBACK REASON",
            ],
            rows,
        ));
    }
    text.push('\n');
    if status.leases.is_empty() {
        text.push_str("No Spot Guard Lease in this namespace.\n");
    } else {
        let rows = status
            .leases
            .iter()
            .map(|row| {
                vec![
                    row.lease.clone(),
                    or_dash(row.holder.clone()),
                    or_dash(row.last_target.as_ref().map(|target| {
                        format!(
                            "{} by {}, {} ago",
                            target.desired,
                            target.node,
                            age(target.age_seconds)
                        )
                    })),
                    or_dash(row.cool_off.as_ref().map(|cool_off| {
                        format!(
                            "{} left ({} on {})",
                            age(cool_off.remaining_seconds),
                            cool_off.reason,
                            cool_off.node
                        )
                    })),
                ]
            })
            .collect();
        text.push_str(&render(
            &["LEASE", "HOLDER", "LAST TARGET", "CAPACITY COOL-OFF"],
            rows,
        ));
    }
    text.push('\n');
    if status.give_back.is_empty() {
        text.push_str("No on-demand fallback to give back.\n");
    } else {
        let rows = status
            .give_back
            .iter()
            .map(|row| {
                vec![
                    row.instance.clone(),
                    row.asg.clone(),
                    row.for_node.clone(),
                    age(row.age_seconds),
                ]
            })
            .collect();
        text.push_str(&render(
            &["ON-DEMAND TO GIVE BACK", "ASG", "BOUGHT FOR", "AGE"],
            rows,
        ));
    }
    text
}
