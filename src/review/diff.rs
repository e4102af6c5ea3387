//! Semantic diff: every (from, to, port, protocol) cell whose verdict differs between two
//! snapshots, grouped into lines of "these sources x these destinations x these ports".
//!
//! Both truth tables come from [`crate::policy::matrix`]; the work follows groups of pods that
//! no selector tells apart (in either snapshot), not pods, so 3 replicas x 200 clients cost one
//! comparison and read as one line.
//!
//! A cell is a pair of pods by `namespace/name`. A pod present in only one snapshot has no
//! verdict to compare: with [`AbsentPods::Skip`] (the default) its cells are left out and the
//! pod is listed in `only_old` / `only_new`; with [`AbsentPods::Deny`] a missing pod counts as
//! "no connection", so a new pod shows every cell it is allowed on (`false -> true`) and a
//! removed one every cell it was allowed on (`true -> false`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::decision::{decide, Decision};
use crate::policy::matrix::{compute, Matrix, PortProto};
use crate::policy::{Cluster, Direction, ObjectName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AbsentPods {
    #[default]
    Skip,
    Deny,
}

/// One changed cell.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cell {
    pub from: ObjectName,
    pub to: ObjectName,
    pub column: PortProto,
    pub before: bool,
    pub after: bool,
    /// Index of the line the cell belongs to.
    pub line: usize,
}

/// Changed cells that share sources, destinations and deciding clauses: every pair of
/// `from` x `to` (except a pod with itself) on every column changed the same way.
#[derive(Debug, Clone)]
pub struct Line {
    pub from: Vec<ObjectName>,
    pub to: Vec<ObjectName>,
    pub columns: Vec<PortProto>,
    pub before: Decision,
    pub after: Decision,
}

impl Line {
    pub fn opens(&self) -> bool {
        self.after.allowed
    }

    /// The cells of this line, in (column, from, to) order.
    pub fn cells(&self, line: usize) -> impl Iterator<Item = Cell> + '_ {
        self.columns.iter().flat_map(move |col| {
            self.from.iter().flat_map(move |f| {
                self.to.iter().filter(move |t| *t != f).map(move |t| Cell {
                    from: f.clone(),
                    to: t.clone(),
                    column: *col,
                    before: self.before.allowed,
                    after: self.after.allowed,
                    line,
                })
            })
        })
    }

    pub fn cell_count(&self) -> usize {
        let overlap = self.from.iter().filter(|f| self.to.contains(f)).count();
        (self.from.len() * self.to.len() - overlap) * self.columns.len()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Diff {
    pub lines: Vec<Line>,
    pub columns: Vec<PortProto>,
    /// Pods by namespace/name that only one snapshot has.
    pub only_old: Vec<ObjectName>,
    pub only_new: Vec<ObjectName>,
    /// Pods compared (present in both; with AbsentPods::Deny, in either).
    pub pods: Vec<ObjectName>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn cell_count(&self) -> usize {
        self.lines.iter().map(Line::cell_count).sum()
    }

    /// Every changed cell, line by line.
    pub fn cells(&self) -> impl Iterator<Item = Cell> + '_ {
        self.lines.iter().enumerate().flat_map(|(i, l)| l.cells(i))
    }
}

/// Where a compared pod sits in each table (None: absent from that snapshot).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Joint {
    old: Option<usize>,
    new: Option<usize>,
}

/// Pods that both tables treat alike: same group in the old table and in the new one.
struct Class {
    /// A member's row in each table.
    rep: Joint,
    /// A second member, for cells between two pods of the class.
    second: Option<Joint>,
    members: Vec<ObjectName>,
}

/// The verdict of a cell in one table; false when either pod is absent from it.
fn verdict(m: &Matrix, a: Option<usize>, b: Option<usize>, col: usize) -> Option<bool> {
    Some(m.allowed(a?, b?, col))
}

/// Compares `old` and `new` on `columns`.
pub fn diff(old: &Cluster, new: &Cluster, columns: &[PortProto], absent: AbsentPods) -> Diff {
    let m_old = compute(old, columns);
    let m_new = compute(new, columns);
    let index = |m: &Matrix| -> HashMap<ObjectName, usize> {
        m.pods
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i))
            .collect()
    };
    let (i_old, i_new) = (index(&m_old), index(&m_new));
    let only_old: Vec<ObjectName> = m_old
        .pods
        .iter()
        .filter(|p| !i_new.contains_key(*p))
        .cloned()
        .collect();
    let only_new: Vec<ObjectName> = m_new
        .pods
        .iter()
        .filter(|p| !i_old.contains_key(*p))
        .cloned()
        .collect();
    let compared: BTreeSet<&ObjectName> = match absent {
        AbsentPods::Skip => m_old
            .pods
            .iter()
            .filter(|p| i_new.contains_key(*p))
            .collect(),
        AbsentPods::Deny => m_old.pods.iter().chain(m_new.pods.iter()).collect(),
    };

    // Classes: one per (old group, new group).
    let mut class_of_key: HashMap<(Option<usize>, Option<usize>), usize> = HashMap::new();
    let mut classes: Vec<Class> = Vec::new();
    for p in &compared {
        let joint = Joint {
            old: i_old.get(*p).copied(),
            new: i_new.get(*p).copied(),
        };
        let key = (
            joint.old.map(|i| m_old.group_of(i)),
            joint.new.map(|i| m_new.group_of(i)),
        );
        let c = *class_of_key.entry(key).or_insert_with(|| {
            classes.push(Class {
                rep: joint,
                second: None,
                members: Vec::new(),
            });
            classes.len() - 1
        });
        let class = &mut classes[c];
        if class.members.len() == 1 {
            class.second = Some(joint);
        }
        class.members.push((*p).clone());
    }

    // A cell can only change when the source's egress side, the destination's ingress side,
    // or what policies see of either pod differs: skip pairs where none does (a large
    // cluster with a small change is mostly such pairs).
    let dirty = |c: &Class, dir: Direction| -> bool {
        c.members
            .iter()
            .any(|name| side_changed(old, new, name, dir))
    };
    let src_dirty: Vec<bool> = classes
        .iter()
        .map(|c| dirty(c, Direction::Egress))
        .collect();
    let dst_dirty: Vec<bool> = classes
        .iter()
        .map(|c| dirty(c, Direction::Ingress))
        .collect();

    // Changed class pairs per column, keyed by how they were decided before and after.
    type Key = (Decision, Decision);
    let mut changed: BTreeMap<(Key, usize), BTreeMap<usize, BTreeSet<usize>>> = BTreeMap::new();
    for (a, ca) in classes.iter().enumerate() {
        for (b, cb) in classes.iter().enumerate() {
            if !src_dirty[a] && !dst_dirty[b] {
                continue;
            }
            let (src, dst) = if a == b {
                match ca.second {
                    Some(second) => (ca.rep, second),
                    None => continue, // a pod with itself: loopback, never filtered
                }
            } else {
                (ca.rep, cb.rep)
            };
            for (col, &c) in columns.iter().enumerate() {
                let before = verdict(&m_old, src.old, dst.old, col).unwrap_or(false);
                let after = verdict(&m_new, src.new, dst.new, col).unwrap_or(false);
                if before == after {
                    continue;
                }
                let (from, to) = (&ca.members[0], pod_name(&classes, b, a == b));
                let explain = |cluster: &Cluster, present: bool, which: &str| {
                    if present {
                        decide(cluster, from, to, c.port, c.protocol)
                    } else {
                        Decision::absent(which)
                    }
                };
                let key = (
                    explain(old, src.old.is_some() && dst.old.is_some(), "NEW"),
                    explain(new, src.new.is_some() && dst.new.is_some(), "OLD"),
                );
                changed
                    .entry((key, col))
                    .or_default()
                    .entry(b)
                    .or_default()
                    .insert(a);
            }
        }
    }

    // Rectangles: destinations with the same set of sources, then columns with the same
    // rectangle.
    let mut rects: BTreeMap<(Key, Vec<usize>, Vec<usize>), Vec<usize>> = BTreeMap::new();
    for ((key, col), by_dst) in changed {
        let mut by_sources: BTreeMap<Vec<usize>, Vec<usize>> = BTreeMap::new();
        for (dst, srcs) in by_dst {
            by_sources
                .entry(srcs.into_iter().collect())
                .or_default()
                .push(dst);
        }
        for (srcs, dsts) in by_sources {
            rects
                .entry((key.clone(), srcs, dsts))
                .or_default()
                .push(col);
        }
    }
    let members = |cs: &[usize]| -> Vec<ObjectName> {
        let mut v: Vec<ObjectName> = cs
            .iter()
            .flat_map(|&c| classes[c].members.iter().cloned())
            .collect();
        v.sort();
        v
    };
    let mut lines: Vec<Line> = rects
        .into_iter()
        .map(|((key, srcs, dsts), cols)| Line {
            from: members(&srcs),
            to: members(&dsts),
            columns: cols.into_iter().map(|c| columns[c]).collect(),
            before: key.0,
            after: key.1,
        })
        .collect();
    // Openings first, then by size, then by names: the order a reviewer reads in.
    lines.sort_by(|x, y| {
        y.opens()
            .cmp(&x.opens())
            .then(y.cell_count().cmp(&x.cell_count()))
            .then_with(|| (&x.from, &x.to, &x.columns).cmp(&(&y.from, &y.to, &y.columns)))
    });
    Diff {
        lines,
        columns: columns.to_vec(),
        only_old,
        only_new,
        pods: compared.into_iter().cloned().collect(),
    }
}

/// Whether a pod's `dir` side may decide differently: it is absent from one snapshot, what
/// policies observe of it (labels, ports, addresses, its namespace's labels) differs, the
/// policies isolating it in `dir` differ, or whether it fails closed (an invalid policy).
fn side_changed(old: &Cluster, new: &Cluster, name: &ObjectName, dir: Direction) -> bool {
    let (Some(a), Some(b)) = (old.pod(name), new.pod(name)) else {
        return true;
    };
    a != b
        || old.namespace_labels(&a.namespace) != new.namespace_labels(&b.namespace)
        || old.isolating(a, dir) != new.isolating(b, dir)
        || old.fails_closed(a) != new.fails_closed(b)
}

/// A member of class `c` to stand for the destination; the second member when source and
/// destination are the same class (two distinct pods).
fn pod_name(classes: &[Class], c: usize, same: bool) -> &ObjectName {
    let m = &classes[c].members;
    if same {
        &m[1]
    } else {
        &m[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::synth::{generate, SynthParams};

    /// The pair pruning and the grouping against a plain cell-by-cell comparison of the two
    /// tables, on a synthetic cluster where a few policies change and a few pods move.
    #[test]
    fn diff_is_the_cell_by_cell_difference_of_the_tables() {
        let old = generate(&SynthParams {
            pods: 600,
            policies: 300,
            namespaces: 12,
            nodes: 6,
            seed: 3,
            unique_pod_labels: false,
        });
        let mut new = old.clone();
        let dropped: Vec<ObjectName> = new.policies.keys().step_by(37).cloned().collect();
        for name in dropped {
            new.remove_policy(&name);
        }
        let relabel: Vec<ObjectName> = new.pods.keys().step_by(97).cloned().collect();
        for name in relabel {
            let labels = &mut new.pods.get_mut(&name).unwrap().labels;
            labels.insert("tier".into(), "web".into());
        }
        let columns: Vec<PortProto> = [8080, 8000, 5432, 9090, 53]
            .into_iter()
            .map(|port| PortProto {
                port,
                protocol: crate::policy::Protocol::Tcp,
            })
            .collect();
        let d = diff(&old, &new, &columns, AbsentPods::Skip);
        let (a, b) = (compute(&old, &columns), compute(&new, &columns));
        let mut want = BTreeSet::new();
        for (c, &column) in columns.iter().enumerate() {
            for i in 0..a.pods.len() {
                for j in 0..a.pods.len() {
                    if i != j && a.allowed(i, j, c) != b.allowed(i, j, c) {
                        want.insert((
                            a.pods[i].clone(),
                            a.pods[j].clone(),
                            column,
                            a.allowed(i, j, c),
                        ));
                    }
                }
            }
        }
        let got: BTreeSet<_> = d
            .cells()
            .map(|c| (c.from, c.to, c.column, c.before))
            .collect();
        assert_eq!(got.len(), d.cell_count(), "no cell twice");
        assert_eq!(got, want);
        assert!(!want.is_empty());
    }
}
