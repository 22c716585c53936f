//! Leader election on a `coordination.k8s.io/v1` Lease, sans-IO: given the
//! lease as last seen (from a watch), the node's name and the time, what to
//! send. The usual semantics (client-go's): the holder renews every retry
//! period; another candidate takes over once the lease record has not
//! changed for `leaseDurationSeconds` *as measured by its own clock* since
//! it saw the record change (no clock comparison between nodes); every
//! write carries the resourceVersion it was decided on, so of two
//! candidates one wins and the other gets a conflict.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

/// What to do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// No lease yet: create it (AlreadyExists = someone else won).
    Create(Lease),
    /// Renew or take over: replace it (a conflict = someone else won).
    Update(Lease),
    /// Someone else holds it.
    Follow { holder: String },
}

/// A lease record as compared between observations: (holder, renewTime).
type Record = (Option<String>, Option<MicroTime>);

/// One candidate's view of the lease.
#[derive(Debug)]
pub struct Elector {
    pub name: String,
    pub namespace: String,
    pub me: String,
    pub duration: Duration,
    /// (holder, renewTime) last seen, and when it was first seen.
    observed: Option<(Record, Instant)>,
}

impl Elector {
    pub fn new(namespace: &str, name: &str, me: &str, duration: Duration) -> Self {
        Elector {
            name: name.into(),
            namespace: namespace.into(),
            me: me.into(),
            duration,
            observed: None,
        }
    }

    fn secs(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// What to send, given the lease as last seen (`None`: there is none).
    pub fn step(&mut self, current: Option<&Lease>, now: Instant, wall: Timestamp) -> Step {
        let Some(lease) = current else {
            self.observed = None;
            return Step::Create(Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.me.clone()),
                    lease_duration_seconds: Some(self.secs()),
                    acquire_time: Some(MicroTime(wall)),
                    renew_time: Some(MicroTime(wall)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            });
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record: Record = (spec.holder_identity.clone(), spec.renew_time.clone());
        let since = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                self.observed = Some((record, now));
                now
            }
        };
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.me.as_str());
        // The holder's own duration counts (it may differ from ours).
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.duration, Duration::from_secs);
        let expired = holder.is_none() || now.saturating_duration_since(since) >= held_for;
        if !mine && !expired {
            return Step::Follow {
                holder: holder.unwrap_or_default(),
            };
        }
        let mut next = lease.clone();
        let s = next.spec.get_or_insert_with(LeaseSpec::default);
        if !mine {
            s.holder_identity = Some(self.me.clone());
            s.acquire_time = Some(MicroTime(wall));
            s.lease_transitions = Some(s.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        s.lease_duration_seconds = Some(self.secs());
        s.renew_time = Some(MicroTime(wall));
        Step::Update(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str, rv: &str, renew: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(by.into()),
                lease_duration_seconds: Some(3),
                renew_time: Some(MicroTime(renew)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn creates_renews_follows_and_takes_over_after_the_duration() {
        let (t0, w) = (Instant::now(), Timestamp::UNIX_EPOCH);
        let mut a = Elector::new("ns", "l", "n1", Duration::from_secs(3));
        let mut b = Elector::new("ns", "l", "n2", Duration::from_secs(3));
        let Step::Create(l) = a.step(None, t0, w) else {
            panic!("no lease: create")
        };
        assert_eq!(
            l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()),
            Some("n1")
        );
        let lease = held("n1", "1", w);
        // The holder renews, keeping the resourceVersion it read (the CAS).
        let Step::Update(r) = a.step(Some(&lease), t0, w) else {
            panic!("renew")
        };
        assert_eq!(r.metadata.resource_version.as_deref(), Some("1"));
        // The other follows until the record has been still for 3 s of its
        // own clock, whatever the timestamps say.
        assert_eq!(
            b.step(Some(&lease), t0, w),
            Step::Follow {
                holder: "n1".into()
            }
        );
        assert!(matches!(
            b.step(Some(&lease), t0 + Duration::from_secs(2), w),
            Step::Follow { .. }
        ));
        // A renewal seen restarts the count.
        let renewed = held("n1", "2", Timestamp::from_second(1).expect("ts"));
        assert!(matches!(
            b.step(Some(&renewed), t0 + Duration::from_secs(4), w),
            Step::Follow { .. }
        ));
        let Step::Update(t) = b.step(Some(&renewed), t0 + Duration::from_secs(7), w) else {
            panic!("take over after the duration")
        };
        let s = t.spec.expect("spec");
        assert_eq!(s.holder_identity.as_deref(), Some("n2"));
        assert_eq!(s.lease_transitions, Some(1));
        assert_eq!(t.metadata.resource_version.as_deref(), Some("2"));
    }

    #[test]
    fn an_empty_holder_is_free() {
        let w = Timestamp::UNIX_EPOCH;
        let mut b = Elector::new("ns", "l", "n2", Duration::from_secs(3));
        assert!(matches!(
            b.step(Some(&held("", "5", w)), Instant::now(), w),
            Step::Update(_)
        ));
    }
}
