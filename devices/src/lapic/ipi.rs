//! Interrupt messages between APICs: what an IPI or an IOAPIC pin sends
//! ([`ApicMessage`]), how the ICR becomes one, which APICs a destination names, how an APIC
//! receives one, and the choice of one APIC for lowest-priority delivery.

use serde::{Deserialize, Serialize};

use super::*;

/// How an interrupt message is delivered (the APIC delivery-mode field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryMode {
    /// Deliver the vector to every destination.
    Fixed,
    /// Deliver the vector to the destination with the lowest priority.
    LowestPriority,
    /// System management interrupt (ignored).
    Smi,
    /// Non-maskable interrupt.
    Nmi,
    /// INIT: the destination CPUs reset and wait for a start-up IPI.
    Init,
    /// Start-up IPI: a CPU waiting for it starts at `vector << 12` in real mode.
    StartUp,
    /// External interrupt: the CPU takes the vector from the 8259 PIC.
    ExtInt,
}

impl DeliveryMode {
    /// Decode the 3-bit delivery-mode field; `None` for the reserved value 3.
    pub fn from_bits(bits: u32) -> Option<DeliveryMode> {
        Some(match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            7 => DeliveryMode::ExtInt,
            _ => return None,
        })
    }
}

/// Who an interrupt message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Destination {
    /// The APIC whose ID matches (0xff: all of them).
    Physical(u8),
    /// The APICs whose logical destination matches (flat or cluster model; 0xff: all).
    Logical(u8),
    /// Only the APIC of this CPU index (shorthand "self").
    Only(u32),
    /// Every APIC (shorthand "all including self").
    All,
    /// Every APIC except that of this CPU index (shorthand "all excluding self").
    AllBut(u32),
    /// x2APIC physical destination: the APIC whose 32-bit ID matches (all ones: all).
    X2Physical(u32),
    /// x2APIC logical destination: cluster in bits 31:16, member bitmap in bits 15:0 (all
    /// ones: all).
    X2Logical(u32),
}

/// An interrupt message on the (virtual) APIC bus, from an IOAPIC or an IPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApicMessage {
    /// The vector (the start-up page for a SIPI).
    pub vector: u8,
    /// How to deliver it.
    pub mode: DeliveryMode,
    /// To whom.
    pub dest: Destination,
    /// Level-triggered (sets the TMR bit, and the EOI is broadcast).
    pub level: bool,
}

impl Lapic {
    /// Receive a message from the APIC bus (already matched to this APIC by [`route`]).
    pub fn receive(&mut self, msg: &ApicMessage) {
        match msg.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                self.accept_fixed(msg.vector, msg.level)
            }
            DeliveryMode::Nmi => self.s.nmi_pending = true,
            DeliveryMode::Init => self.init(),
            DeliveryMode::StartUp => {
                // Only a CPU in wait-for-SIPI listens; Linux sends two and the second is
                // ignored by design.
                if self.s.wait_for_sipi {
                    self.s.wait_for_sipi = false;
                    self.s.sipi_vector = Some(msg.vector);
                }
            }
            DeliveryMode::ExtInt => self.s.extint_pending = true,
            DeliveryMode::Smi => {}
        }
    }

    /// INIT: reset the APIC (keeping its ID) and put the CPU in wait-for-SIPI.
    pub(super) fn init(&mut self) {
        let (id, x2apic) = (self.s.id, self.s.x2apic);
        self.s = LapicState::reset(id);
        // INIT leaves IA32_APIC_BASE alone, so the mode stays.
        if x2apic {
            self.enter_x2apic();
        }
        self.s.wait_for_sipi = true;
        self.s.init_pending = true;
    }

    /// Whether `dest` names this APIC.
    pub fn matches(&self, dest: &Destination) -> bool {
        match *dest {
            Destination::Physical(id) => id == 0xff || id == self.s.id,
            Destination::Logical(mask) => {
                let ldr = (self.s.ldr >> 24) as u8;
                if mask == 0xff {
                    true
                } else if self.s.dfr >> 28 == 0xf {
                    // Flat model: one bit per APIC.
                    ldr & mask != 0
                } else {
                    // Cluster model: cluster in the high nibble, members in the low one.
                    ldr >> 4 == mask >> 4 && ldr & mask & 0xf != 0
                }
            }
            Destination::Only(cpu) => cpu == self.cpu,
            Destination::All => true,
            Destination::AllBut(cpu) => cpu != self.cpu,
            Destination::X2Physical(id) => id == u32::MAX || id == self.x2apic_id(),
            Destination::X2Logical(d) => {
                let ldr = self.x2apic_ldr();
                d == u32::MAX || (d >> 16 == ldr >> 16 && d & ldr & 0xffff != 0)
            }
        }
    }

    /// Turn the ICR into a message.
    pub(super) fn send_ipi(&mut self) -> LapicEffect {
        let low = self.s.icr_low;
        let vector = (low & icr::VECTOR) as u8;
        let Some(mode) = DeliveryMode::from_bits((low & icr::DELIVERY_MODE) >> 8) else {
            return LapicEffect::None;
        };
        let level = low & icr::LEVEL != 0;
        match mode {
            // INIT level de-assert only resynchronizes arbitration IDs.
            DeliveryMode::Init if level && low & icr::ASSERT == 0 => return LapicEffect::None,
            // ExtINT cannot be sent as an IPI.
            DeliveryMode::ExtInt => return LapicEffect::None,
            DeliveryMode::Fixed | DeliveryMode::LowestPriority if vector < 16 => {
                self.error(esr::SEND_ILLEGAL_VECTOR);
                return LapicEffect::None;
            }
            _ => {}
        }
        let target = (self.s.icr_high >> 24) as u8;
        let dest = match low & icr::SHORTHAND {
            icr::SELF => Destination::Only(self.cpu),
            icr::ALL => Destination::All,
            icr::ALL_BUT_SELF => Destination::AllBut(self.cpu),
            // In x2APIC mode the ICR's high half is the whole 32-bit destination.
            _ if self.s.x2apic && low & icr::LOGICAL != 0 => {
                Destination::X2Logical(self.s.icr_high)
            }
            _ if self.s.x2apic => Destination::X2Physical(self.s.icr_high),
            _ if low & icr::LOGICAL != 0 => Destination::Logical(target),
            _ => Destination::Physical(target),
        };
        LapicEffect::Ipi(ApicMessage {
            vector,
            mode,
            dest,
            // Only fixed IPIs can be level-triggered; INIT's trigger bit means de-assert.
            level: level && matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority),
        })
    }
}

/// Deliver `msg` to the APICs it names; a lowest-priority message goes to one of them,
/// chosen by [`lowest_priority_target`]. Returns the indices (into `lapics`) of the APICs
/// that received it.
pub fn route(lapics: &mut [Lapic], msg: &ApicMessage) -> Vec<usize> {
    let mut targets: Vec<usize> = lapics
        .iter()
        .enumerate()
        .filter(|(_, l)| l.matches(&msg.dest))
        .map(|(k, _)| k)
        .collect();
    if msg.mode == DeliveryMode::LowestPriority {
        if let Some(best) = lowest_priority_target(lapics, &targets, msg.vector) {
            targets = vec![best];
        }
    }
    for &k in &targets {
        lapics[k].receive(msg);
    }
    targets
}

/// The APIC among `candidates` (indices into `lapics`, the APICs a lowest-priority message
/// names) that takes a lowest-priority interrupt of `vector` (SDM vol. 3, 10.6.2.4), by a
/// fixed rule that reads only APIC state, so the choice is deterministic and needs no state
/// of its own:
/// 1. the focus processor: an APIC that already has `vector` requested (IRR) or in service
///    (ISR) and has focus checking enabled (SVR bit 9 clear) — the lowest APIC ID if
///    several;
/// 2. otherwise the APIC with the lowest processor priority (PPR, all 8 bits; the SDM lets
///    the chipset use the TPR, and PPR is the TPR raised by what is in service);
/// 3. ties go to the lowest APIC ID (the x2APIC ID, which is the xAPIC ID zero-extended),
///    then to the lowest CPU index (two APICs may be given one ID).
///
/// Software-disabled APICs (SVR bit 8 clear), which drop fixed interrupts, take part only
/// when every candidate is one (the interrupt is then lost, as it would be on any of them).
/// `None` when there are no candidates.
pub fn lowest_priority_target(lapics: &[Lapic], candidates: &[usize], vector: u8) -> Option<usize> {
    let enabled: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|&k| lapics[k].s.svr & svr::ENABLED != 0)
        .collect();
    let pool = if enabled.is_empty() {
        candidates
    } else {
        &enabled[..]
    };
    let id = |k: usize| (lapics[k].x2apic_id(), k);
    let focus = pool
        .iter()
        .copied()
        .filter(|&k| lapics[k].is_focus_for(vector))
        .min_by_key(|&k| id(k));
    focus.or_else(|| {
        pool.iter()
            .copied()
            .min_by_key(|&k| (lapics[k].ppr(), id(k)))
    })
}

impl Lapic {
    /// Whether this APIC is the focus processor for `vector`: focus checking enabled and
    /// the vector requested or in service here.
    fn is_focus_for(&self, vector: u8) -> bool {
        self.s.svr & svr::FOCUS_DISABLED == 0
            && (test_bit(&self.s.irr, vector) || test_bit(&self.s.isr, vector))
    }
}
