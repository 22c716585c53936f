//! One round of group commit (see the parent module).

use std::collections::HashSet;
use std::mem;

use super::*;

impl Worker {
    pub(super) async fn round(&mut self, pending: &mut Vec<Op>) {
        Counters::add(&self.counters.rounds, 1);
        let now_i = Instant::now();
        if self.needs_resync
            && let Err(e) = self.resync().await
        {
            let reason = e.to_string();
            let ops = mem::take(pending);
            for mut op in ops {
                if op.not_before > now_i {
                    pending.push(op);
                    continue;
                }
                op.last_failure = Some(Failure::Unavailable(reason.clone()));
                if let Some(op) = self.retry_or_fail(op, now_i, pending) {
                    pending.push(op);
                }
            }
            pending.sort_by_key(|o| o.id);
            return;
        }

        // Pick this round's ops: ready, within the batch limit, and not
        // behind an earlier op on the same handle.
        let limit = if self.opts.group_commit {
            self.opts.max_batch.max(1)
        } else {
            1
        };
        let mut busy: HashSet<String> = HashSet::new();
        let mut batch: Vec<Op> = Vec::new();
        let mut keep: Vec<Op> = Vec::new();
        for op in mem::take(pending) {
            let free = !busy.contains(&op.handle);
            busy.insert(op.handle.clone());
            if free && op.not_before <= now_i && batch.len() < limit {
                batch.push(op);
            } else {
                keep.push(op);
            }
        }

        // Plan.
        let now = self.clock.now_ms();
        let mut work = WorkSet::new();
        let mut affine: Vec<String> = self
            .view
            .blocks
            .values()
            .filter(|b| b.spec.affinity.as_deref() == Some(self.view.affinity.as_str()))
            .map(|b| b.name.clone())
            .collect();
        let mut outcomes = Vec::with_capacity(batch.len());
        for (i, op) in batch.iter_mut().enumerate() {
            let mut p = Planner {
                view: &self.view,
                work: &mut work,
                now,
                affine: &mut affine,
                fetch: None,
            };
            let outcome = plan_op(&mut p, i, op);
            let outcome = match p.fetch.take() {
                // Nothing of the op stays planned (see plan_op).
                Some(b) if !matches!(outcome, Outcome::Fetch(_)) => {
                    p.undo(i, &op.tents);
                    op.tents.clear();
                    Outcome::Fetch(vec![b])
                }
                _ => outcome,
            };
            outcomes.push(outcome);
        }

        // Tell waiting callers what was chosen before the (slow) write.
        for (op, o) in batch.iter_mut().zip(&outcomes) {
            // Only a fresh allocation: a top-up of a handle that already
            // holds addresses would announce part of its answer.
            if let (Kind::Alloc { picked, done, .. }, Outcome::Planned) = (&mut op.kind, o)
                && done.is_empty()
                && !op.tents.is_empty()
                && let Some(tx) = picked.take()
            {
                let ips: Vec<IpAddr> = op
                    .tents
                    .iter()
                    .filter_map(|t| work.get(&t.block)?.obj.spec.ip_of(t.ordinal))
                    .collect();
                let _ = tx.send(ips);
            }
        }

        // Write every touched block once, in parallel.
        let names: Vec<String> = work
            .iter()
            .filter(|(_, w)| !w.members.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for n in &names {
            if let Some(w) = work.get_mut(n) {
                w.obj.spec.sequence += 1;
            }
        }
        Counters::add(&self.counters.writes, names.len() as u64);
        let results = {
            let store = &self.store;
            let work = &work;
            let this = &*self;
            join_all(names.iter().map(|n| async move {
                let w = &work[n];
                if w.create {
                    this.timed(store.create_block(n, &w.obj.spec)).await
                } else {
                    this.timed(store.update_block(&w.obj)).await
                }
            }))
            .await
        };
        let mut failed: HashSet<String> = HashSet::new();
        let mut reread: Vec<String> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Reread(b) => Some(b.clone()),
                _ => None,
            })
            .collect();
        let mut written: Vec<String> = Vec::new();
        let mut failure: Option<Failure> = None;
        for (n, r) in names.iter().zip(results) {
            match r {
                Ok(obj) => {
                    self.store_succeeded();
                    self.view.put_block(obj);
                    written.push(n.clone());
                }
                Err(e) => {
                    failed.insert(n.clone());
                    match &e {
                        StoreError::Conflict { .. } | StoreError::AlreadyExists { .. } => {
                            Counters::add(&self.counters.conflicts, 1);
                            failure.get_or_insert(Failure::Conflict(n.clone()));
                            // A lost race on a block that is not ours (a
                            // borrow, a reclaim, a claim of a CIDR we did not
                            // know was taken) means the cache of other
                            // nodes' blocks is stale: re-list everything
                            // rather than discover it one conflict at a time.
                            let ours =
                                self.view.affinity_of(n) == Some(self.view.affinity.as_str());
                            if ours {
                                reread.push(n.clone());
                            } else {
                                self.needs_resync = true;
                            }
                        }
                        StoreError::NotFound { .. } => {
                            failure.get_or_insert(Failure::Conflict(n.clone()));
                            self.view.remove_block(n);
                        }
                        StoreError::Unavailable { .. } | StoreError::Invalid { .. } => {
                            self.store_failed(&e);
                            failure = Some(Failure::Unavailable(e.to_string()));
                            reread.push(n.clone());
                        }
                    }
                    debug!(block = %n, error = %e, "block write failed");
                }
            }
        }
        // Summarised blocks the ops want to write: read them whole, pinned
        // while the op is pending (a dual-stack op may need two, planned
        // one at a time; unpinning the first while fetching the second
        // would go round for ever).
        for (op, o) in batch.iter().zip(&outcomes) {
            if let Outcome::Fetch(names) = o {
                for n in names {
                    // Each op holds its own pin: a block two ops need stays
                    // whole until both are done.
                    self.view.pinned.insert(n.clone());
                    if !self.pins.iter().any(|(p, id)| p == n && *id == op.id) {
                        self.pins.push((n.clone(), op.id));
                    }
                    reread.push(n.clone());
                }
            }
        }
        if !reread.is_empty() {
            reread.sort();
            reread.dedup();
            self.reread(&reread).await;
        }

        // Resolve ops.
        for (op, outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Finished => {
                    self.finish(op);
                }
                Outcome::Failed(e) => {
                    if op.refreshed
                        && matches!(e, IpamError::NoPool { .. } | IpamError::Exhausted { .. })
                    {
                        self.futile_relist = Some(now_i);
                    }
                    Counters::add(&self.counters.failed, 1);
                    self.fail(op, e, &mut keep);
                }
                Outcome::Refresh(e) => {
                    let recent = self
                        .futile_relist
                        .is_some_and(|t| now_i.duration_since(t) < self.opts.min_relist_interval);
                    if recent && !self.needs_resync {
                        Counters::add(&self.counters.failed, 1);
                        self.fail(op, e, &mut keep);
                    } else {
                        self.needs_resync = true;
                        keep.push(op);
                    }
                }
                Outcome::Reread(_) => keep.push(op),
                Outcome::Fetch(_) if now_i >= op.deadline => {
                    Counters::add(&self.counters.failed, 1);
                    let e = IpamError::Unavailable {
                        reason: "request timed out reading blocks to write".into(),
                        source: None,
                    };
                    self.fail(op, e, &mut keep);
                }
                Outcome::Fetch(_) => keep.push(op),
                Outcome::Planned => {
                    let mut op = op;
                    let tents = mem::take(&mut op.tents);
                    let mut all_ok = true;
                    for t in tents {
                        if failed.contains(&t.block) {
                            all_ok = false;
                        } else {
                            self.commit(&mut op, t);
                        }
                    }
                    if all_ok && self.complete(&op) {
                        self.finish(op);
                    } else {
                        op.last_failure = failure.clone().or(op.last_failure);
                        if let Some(op) = self.retry_or_fail(op, now_i, &mut keep) {
                            keep.push(op);
                        }
                    }
                }
            }
        }
        keep.sort_by_key(|o| o.id);
        *pending = keep;
        // Blocks pinned whole for ops that are no longer pending: what was
        // written holds this node's allocations (kept whole for that) or
        // is gone; the rest is summarised again.
        let done: Vec<String> = self
            .pins
            .extract_if(.., |(_, id)| !pending.iter().any(|o| o.id == *id))
            .map(|(n, _)| n)
            .collect();
        for n in done {
            if !self.pins.iter().any(|(p, _)| *p == n) {
                self.view.unpin(&n);
            }
        }

        self.release_empty_blocks(&written, now).await;
    }

    /// Re-reads blocks after failed writes; a failed read forces a full
    /// resync before the next round.
    async fn reread(&mut self, names: &[String]) {
        Counters::add(&self.counters.reads, names.len() as u64);
        let store = self.store.clone();
        let results = {
            let this = &*self;
            join_all(names.iter().map(|n| this.timed(store.get_block(n)))).await
        };
        for (n, r) in names.iter().zip(results) {
            match r {
                Ok(Some(obj)) => self.view.put_block(obj),
                Ok(None) => self.view.remove_block(n),
                Err(e) => {
                    self.store_failed(&e);
                    self.needs_resync = true;
                }
            }
        }
    }

    /// Records a committed tentative change.
    fn commit(&mut self, op: &mut Op, t: Tent) {
        match &mut op.kind {
            Kind::Alloc { done, .. } => done.push(Slot {
                block: t.block,
                ordinal: t.ordinal,
            }),
            // Reported at plan time.
            Kind::Release { .. } | Kind::Move { .. } => {}
            Kind::Targets {
                remaining,
                released,
                ..
            } => {
                if let Some(i) = remaining
                    .iter()
                    .position(|r| r.block == t.block && r.ordinal == t.ordinal)
                {
                    released.push(remaining.swap_remove(i));
                }
            }
        }
    }

    /// Whether an op has everything it needs after a fully successful round.
    fn complete(&self, op: &Op) -> bool {
        match &op.kind {
            Kind::Alloc { families, done, .. } => {
                let fams = families.as_deref().unwrap_or(&[]);
                fams.iter().all(|f| {
                    done.iter().any(|s| {
                        self.view
                            .blocks
                            .get(&s.block)
                            .is_some_and(|b| b.spec.cidr.family() == *f)
                    })
                })
            }
            // Releases re-plan from the index until nothing is left; a round
            // without failures left nothing.
            Kind::Release { .. } | Kind::Targets { .. } | Kind::Move { .. } => true,
        }
    }

    /// Sends the success reply.
    fn finish(&mut self, op: Op) {
        match op.kind {
            Kind::Alloc { done, reply, .. } => {
                let mut out: Vec<Assigned> = done
                    .iter()
                    .filter_map(|s| {
                        let b = self.view.blocks.get(&s.block)?;
                        self.view.assigned(&b.spec, s.ordinal)
                    })
                    .collect();
                out.sort_by_key(|a| a.ip);
                let n = out.len() as u64;
                Counters::add(&self.counters.allocated, n);
                let _ = reply.send(Ok(out));
            }
            Kind::Release { released, reply } => {
                let n = released.len() as u64;
                Counters::add(&self.counters.released, n);
                let _ = reply.send(Ok(released));
            }
            Kind::Targets {
                released, reply, ..
            } => {
                let n = released.len() as u64;
                Counters::add(&self.counters.released, n);
                if let Some(r) = reply {
                    let _ = r.send(Ok(released));
                }
            }
            Kind::Move { moved, reply, .. } => {
                let _ = reply.send(Ok(moved));
            }
        }
    }

    /// Sends an error. A failed allocation must leave its handle holding
    /// nothing: everything the handle holds now (committed parts, or a write
    /// that landed although its reply was lost) is rolled back by a release
    /// op that keeps the handle's place in the queue. Ops on one handle run
    /// in order, so nothing else can have allocated for it meanwhile.
    fn fail(&mut self, op: Op, e: IpamError, keep: &mut Vec<Op>) {
        match op.kind {
            Kind::Alloc { done, reply, .. } => {
                let mut slots: Vec<Slot> =
                    self.view.index.get(&op.handle).cloned().unwrap_or_default();
                for s in done {
                    if !slots.contains(&s) {
                        slots.push(s);
                    }
                }
                let targets: Vec<ReleaseTarget> = slots
                    .iter()
                    .filter_map(|s| {
                        let a = self.view.blocks.get(&s.block)?.spec.allocation(s.ordinal)?;
                        (a.handle == op.handle).then(|| ReleaseTarget {
                            block: s.block.clone(),
                            ordinal: s.ordinal,
                            handle: a.handle.clone(),
                            sequence: a.sequence,
                        })
                    })
                    .collect();
                if !targets.is_empty() {
                    warn!(handle = %op.handle, "rolling back a failed allocation");
                    keep.push(Op {
                        id: op.id,
                        handle: op.handle,
                        kind: Kind::Targets {
                            remaining: targets,
                            released: Vec::new(),
                            reply: None,
                        },
                        attempts: 0,
                        not_before: Instant::now(),
                        deadline: Instant::now() + self.opts.request_timeout,
                        refreshed: true,
                        tents: Vec::new(),
                        last_failure: None,
                    });
                }
                let _ = reply.send(Err(e));
            }
            Kind::Release { reply, .. } | Kind::Move { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Kind::Targets { reply, .. } => {
                if let Some(r) = reply {
                    let _ = r.send(Err(e));
                } else {
                    warn!(handle = %op.handle, error = %e, "rollback failed; GC will reclaim");
                }
            }
        }
    }

    /// Queues another attempt, or fails the op when out of attempts/time.
    fn retry_or_fail(&mut self, mut op: Op, now: Instant, keep: &mut Vec<Op>) -> Option<Op> {
        op.attempts += 1;
        // Rollbacks have no caller waiting: they retry until their deadline.
        let rollback = matches!(op.kind, Kind::Targets { reply: None, .. });
        if (!rollback && op.attempts >= self.opts.max_attempts) || now >= op.deadline {
            Counters::add(&self.counters.failed, 1);
            let e = match &op.last_failure {
                Some(Failure::Conflict(block)) => IpamError::Aborted {
                    attempts: op.attempts,
                    block: block.clone(),
                },
                Some(Failure::Unavailable(reason)) => IpamError::Unavailable {
                    reason: format!("after {} attempts: {reason}", op.attempts),
                    source: None,
                },
                None => IpamError::Unavailable {
                    reason: format!("gave up after {} attempts", op.attempts),
                    source: None,
                },
            };
            self.fail(op, e, keep);
            return None;
        }
        Counters::add(&self.counters.retries, 1);
        op.not_before = now + self.backoff(op.attempts);
        Some(op)
    }

    /// Deletes blocks of this node that this round emptied, when the node
    /// keeps another affine block with room in the same pool.
    async fn release_empty_blocks(&mut self, written: &[String], now: u64) {
        let cd = self.view.config.reuse_cooldown_ms;
        let mut victims: Vec<(String, String)> = Vec::new();
        for n in written {
            let Some(b) = self.view.blocks.get(n) else {
                continue;
            };
            let s = &b.spec;
            if s.affinity.as_deref() != Some(self.view.affinity.as_str())
                || !s.is_empty()
                || s.has_cooling(now, cd)
            {
                continue;
            }
            let Some(pool) = self.view.pool_of(&s.cidr) else {
                continue;
            };
            let other_with_room = self.view.blocks.values().any(|o| {
                o.name != *n
                    && !victims.iter().any(|(v, _)| *v == o.name)
                    && o.spec.affinity == s.affinity
                    && pool.spec.cidr.contains_cidr(&o.spec.cidr)
                    && o.spec.usable_count(now, cd) > 0
            });
            if other_with_room {
                victims.push((n.clone(), b.resource_version.clone()));
            }
        }
        if victims.is_empty() {
            return;
        }
        Counters::add(&self.counters.writes, victims.len() as u64);
        let store = self.store.clone();
        let results = {
            let this = &*self;
            join_all(
                victims
                    .iter()
                    .map(|(n, rv)| this.timed(store.delete_block(n, rv))),
            )
            .await
        };
        for ((n, _), r) in victims.iter().zip(results) {
            match r {
                Ok(()) | Err(StoreError::NotFound { .. }) => {
                    debug!(block = %n, "released empty block");
                    self.view.remove_block(n);
                }
                // Someone wrote to it meanwhile: it stays; the next write
                // to it re-reads.
                Err(e) => debug!(block = %n, error = %e, "empty block not released"),
            }
        }
    }
}

/// Plans one op into the working set.
fn plan_op(p: &mut Planner<'_>, i: usize, op: &mut Op) -> Outcome {
    op.tents.clear();
    let refreshed = op.refreshed;
    match &mut op.kind {
        Kind::Alloc {
            req,
            use_,
            families,
            done,
            ..
        } => {
            // Idempotency / top-up: adopt what the handle holds (an earlier
            // request, or one of our writes whose reply was lost). Ops on one
            // handle are serialized, so all of it is ours.
            let handle = &req.handle;
            done.retain(|s| {
                p.view
                    .blocks
                    .get(&s.block)
                    .and_then(|b| b.spec.allocation(s.ordinal))
                    .is_some_and(|a| a.handle == *handle)
            });
            for s in p.view.index.get(handle).into_iter().flatten() {
                if !done.contains(s) {
                    done.push(s.clone());
                }
            }
            let fams = match families {
                Some(f) => f.clone(),
                None => {
                    let f = resolve_families(p.view, req, *use_);
                    *families = Some(f.clone());
                    f
                }
            };
            if fams.is_empty() {
                return Outcome::Failed(IpamError::NoPool {
                    family: Family::V4,
                    reason: format!("no pool selects node {}", p.view.node.name),
                });
            }
            let held: HashSet<Family> = done
                .iter()
                .filter_map(|s| p.view.blocks.get(&s.block))
                .map(|b| b.spec.cidr.family())
                .collect();
            let mut tents = Vec::new();
            for fam in fams.iter().filter(|f| !held.contains(f)) {
                let requested = req
                    .requested_ips
                    .iter()
                    .copied()
                    .find(|ip| Family::of(*ip) == *fam);
                let r = match requested {
                    Some(ip) => p
                        .specific(i, ip, &req.handle, &req.attrs, *use_)
                        .map(|t| t.into_iter().collect::<Vec<_>>()),
                    None => p
                        .auto(i, *fam, &req.pool_hints, *use_, &req.handle, &req.attrs)
                        .map(|t| vec![t]),
                };
                match r {
                    Ok(ts) => tents.extend(ts),
                    Err(e) => {
                        p.undo(i, &tents);
                        if refreshed {
                            return Outcome::Failed(e);
                        }
                        // Decided from a possibly stale cache: look again
                        // once before saying so.
                        return match e {
                            IpamError::InUse { ip, .. } => match p.view.block_containing(ip) {
                                Some(b) => {
                                    op.refreshed = true;
                                    Outcome::Reread(b.to_string())
                                }
                                None => Outcome::Failed(e),
                            },
                            IpamError::NoPool { .. } | IpamError::Exhausted { .. } => {
                                op.refreshed = true;
                                Outcome::Refresh(e)
                            }
                            e => Outcome::Failed(e),
                        };
                    }
                }
            }
            if tents.is_empty() {
                return Outcome::Finished;
            }
            op.tents = tents;
            Outcome::Planned
        }
        Kind::Release { released, .. } => {
            // Addresses are reported when planned: the op only finishes once
            // the handle holds nothing, so each of them is released by then
            // (possibly by a write whose reply was lost).
            let slots = p.view.index.get(&op.handle).cloned().unwrap_or_default();
            for s in slots {
                let before = op.tents.len();
                plan_free(
                    p,
                    i,
                    &s.block,
                    s.ordinal,
                    |a| a.handle == op.handle,
                    &mut op.tents,
                );
                if op.tents.len() > before
                    && let Some(ip) = p
                        .work
                        .get(&s.block)
                        .and_then(|w| w.obj.spec.ip_of(s.ordinal))
                    && !released.contains(&ip)
                {
                    released.push(ip);
                }
            }
            if op.tents.is_empty() {
                Outcome::Finished
            } else {
                Outcome::Planned
            }
        }
        Kind::Move {
            from, attrs, moved, ..
        } => plan_move(p, i, from, &op.handle, attrs, moved, &mut op.tents),
        Kind::Targets {
            remaining,
            released,
            ..
        } => {
            // Another node's block (the leak GC releasing a gone node's
            // allocation) is cached summarised: read it whole first, or the
            // target would look released already.
            let mut fetch: Vec<String> = remaining
                .iter()
                .filter(|t| p.summarised(&t.block))
                .map(|t| t.block.clone())
                .collect();
            if !fetch.is_empty() {
                fetch.sort();
                fetch.dedup();
                return Outcome::Fetch(fetch);
            }
            // Targets that no longer hold their allocation are done; after a
            // first attempt that may be our own write whose reply was lost.
            let retry = op.attempts > 0;
            let mut still = Vec::new();
            for t in remaining.drain(..) {
                let holds = p
                    .work
                    .get(&t.block)
                    .map(|w| &w.obj.spec)
                    .or_else(|| p.view.blocks.get(&t.block).map(|b| &b.spec))
                    .and_then(|b| b.allocation(t.ordinal))
                    .is_some_and(|a| a.handle == t.handle && a.sequence == t.sequence);
                if holds {
                    still.push(t);
                } else if retry {
                    released.push(t);
                }
            }
            *remaining = still;
            for t in remaining.iter() {
                let (h, seq) = (t.handle.clone(), t.sequence);
                plan_free(
                    p,
                    i,
                    &t.block,
                    t.ordinal,
                    |a| a.handle == h && a.sequence == seq,
                    &mut op.tents,
                );
            }
            if op.tents.is_empty() {
                Outcome::Finished
            } else {
                Outcome::Planned
            }
        }
    }
}

/// Plans a [`Kind::Move`]: every slot of `from` is rewritten to `to`, or
/// nothing is.
fn plan_move(
    p: &mut Planner<'_>,
    i: usize,
    from: &str,
    to: &str,
    attrs: &crate::model::AllocationAttrs,
    moved: &mut Vec<IpAddr>,
    tents: &mut Vec<Tent>,
) -> Outcome {
    let family_of =
        |p: &Planner<'_>, s: &Slot| p.view.blocks.get(&s.block).map(|b| b.spec.cidr.family());
    let slots = p.view.index.get(from).cloned().unwrap_or_default();
    let held = p.view.index.get(to).cloned().unwrap_or_default();
    if slots.is_empty() {
        // Our own earlier write landed although its reply was lost, or
        // there is nothing to move.
        if held.is_empty() {
            return Outcome::Failed(IpamError::InvalidArgument {
                reason: format!("handle {from} holds no address to move to {to}"),
            });
        }
        moved.clear();
        for s in &held {
            if let Some(ip) = p
                .view
                .blocks
                .get(&s.block)
                .and_then(|b| b.spec.ip_of(s.ordinal))
            {
                moved.push(ip);
            }
        }
        moved.sort();
        return Outcome::Finished;
    }
    for s in &slots {
        if held.iter().any(|h| family_of(p, h) == family_of(p, s)) {
            let ip = p
                .view
                .blocks
                .get(&s.block)
                .and_then(|b| b.spec.ip_of(s.ordinal));
            return Outcome::Failed(IpamError::InvalidArgument {
                reason: format!(
                    "handle {to} already holds an address of the family of {} ({from})",
                    ip.map(|ip| ip.to_string()).unwrap_or_default()
                ),
            });
        }
    }
    moved.clear();
    for s in &slots {
        let Some(w) = p.entry(&s.block) else {
            continue;
        };
        let spec = &mut w.obj.spec;
        if spec.allocation(s.ordinal).is_none_or(|a| a.handle != from) {
            continue;
        }
        let sequence = spec.sequence + 1;
        spec.remove_allocation(s.ordinal);
        spec.insert_allocation(crate::model::Allocation {
            ordinal: s.ordinal,
            handle: to.to_string(),
            attrs: attrs.clone(),
            sequence,
        });
        if let Some(ip) = spec.ip_of(s.ordinal) {
            moved.push(ip);
        }
        if !w.members.contains(&i) {
            w.members.push(i);
        }
        tents.push(Tent {
            block: s.block.clone(),
            ordinal: s.ordinal,
            taken: None,
        });
    }
    moved.sort();
    if tents.is_empty() {
        Outcome::Finished
    } else {
        Outcome::Planned
    }
}

fn plan_free(
    p: &mut Planner<'_>,
    op: usize,
    block: &str,
    ordinal: u32,
    matches: impl Fn(&crate::model::Allocation) -> bool,
    tents: &mut Vec<Tent>,
) {
    let now = p.now;
    let Some(w) = p.entry(block) else { return };
    if !w.obj.spec.allocation(ordinal).is_some_and(&matches) {
        return;
    }
    w.obj.spec.release(ordinal, now);
    if !w.members.contains(&op) {
        w.members.push(op);
    }
    tents.push(Tent {
        block: block.to_string(),
        ordinal,
        taken: None,
    });
}

fn resolve_families(v: &View, req: &AllocRequest, use_: AllowedUse) -> Vec<Family> {
    if !req.families.is_empty() {
        let mut f = req.families.clone();
        f.sort();
        f.dedup();
        return f;
    }
    if !req.requested_ips.is_empty() {
        let mut f: Vec<Family> = req.requested_ips.iter().map(|ip| Family::of(*ip)).collect();
        f.sort();
        f.dedup();
        return f;
    }
    [Family::V4, Family::V6]
        .into_iter()
        .filter(|f| !v.eligible_pools(*f, &req.pool_hints, use_).is_empty())
        .collect()
}
