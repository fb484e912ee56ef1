//! The second stage of a [`super::Tracer`]: the cache-line policy and the sink.

use super::*;

/// The second stage: the cache-line policy and the sink, fed [`Filtered`] items in order.
pub struct PolicyStage<P: CacheLinePolicy, S: Sink> {
    policy: P,
    sink: S,
    values: bool,
    last: u64,
    kept: u64,
    error: Option<TraceError>,
}

impl<P: CacheLinePolicy, S: Sink> PolicyStage<P, S> {
    /// A policy stage; `values` keeps the value of each access.
    pub fn new(policy: P, sink: S, values: bool) -> Self {
        PolicyStage {
            policy,
            sink,
            values,
            last: 0,
            kept: 0,
            error: None,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// Accesses (line pieces) kept so far.
    pub fn kept(&self) -> u64 {
        self.kept
    }

    /// Whether the sink failed (later items are then dropped).
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Positions never go backwards in a trace, whatever a confused caller says: a record
    /// is placed no earlier than the last one.
    fn emit(&mut self, mut r: Record) {
        if self.error.is_none() {
            r.position = r.position.max(self.last);
            self.last = r.position;
            if let Err(e) = self.sink.record(&r) {
                self.error = Some(e);
            }
        }
    }

    /// [`Self::emit`] of a borrowed record: copied only if its position must be raised.
    pub(super) fn emit_ref(&mut self, r: &Record) {
        if r.position < self.last {
            self.emit(r.clone());
        } else if self.error.is_none() {
            self.last = r.position;
            if let Err(e) = self.sink.record(r) {
                self.error = Some(e);
            }
        }
    }

    /// Take the next item of the stream.
    #[inline]
    pub fn take(&mut self, item: Filtered) {
        // Accesses are nearly every item and nearly all dropped: judge them here, inline in
        // the observer's path; everything else (and building a kept access's record) is out
        // of line.
        match item {
            Filtered::Access { position, access } => self.access(position, &access),
            other => self.take_other(other),
        }
    }

    /// Judge one access (one line's piece) at `position`; record it if kept.
    #[inline(always)]
    pub fn access(&mut self, position: u64, access: &Access) {
        match self.policy.quick_keep(access) {
            Some(false) => {}
            Some(true) => self.record_access(position, access, Outcome::default().note),
            None => self.judge(position, access),
        }
    }

    /// [`Self::access`] of an access the policy has no quick verdict on.
    #[inline(never)]
    fn judge(&mut self, position: u64, access: &Access) {
        let o = self.policy.observe(access);
        if o.keep {
            self.record_access(position, access, o.note);
        }
    }

    /// Record a kept access.
    #[inline(never)]
    fn record_access(&mut self, position: u64, access: &Access, note: crate::record::Note) {
        self.kept += 1;
        let r = Record {
            position,
            cpu: access.cpu,
            event: Event::Access(AccessEvent::from_access(access, self.values, note)),
        };
        self.emit(r);
    }

    /// Every item but a plain access.
    #[inline(never)]
    fn take_other(&mut self, item: Filtered) {
        match item {
            Filtered::Context(r) => self.emit(*r),
            // Resolved by the filter stage before it comes here; never made otherwise.
            Filtered::Control(c) => {
                if c.kept {
                    self.emit(c.record());
                }
            }
            Filtered::Kept { position, access } => {
                self.record_access(position, &access, Outcome::default().note)
            }
            Filtered::Settle(lines) => {
                if let Some(m) = self.policy.as_movement_mut() {
                    for (line, holders) in lines.iter() {
                        m.set_holders(*line, *holders);
                    }
                }
            }
            Filtered::Access { position, access } => self.access(position, &access),
        }
    }

    /// Hand back the sink and the policy, or the first error the sink reported.
    pub fn finish(self) -> Result<(S, P), TraceError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok((self.sink, self.policy)),
        }
    }
}
