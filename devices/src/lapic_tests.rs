use super::*;

/// An enabled APIC (SVR vector 0xff, software-enabled) of CPU 0 with ID 0.
fn enabled(cpu: u32, id: u8) -> Lapic {
    let mut l = Lapic::new(cpu, id);
    assert_eq!(l.write(reg::SVR, svr::ENABLED | 0xff, 0), LapicEffect::None);
    l
}

#[test]
fn power_on_values() {
    let l = Lapic::new(2, 7);
    assert_eq!(l.read(reg::ID, 0), 7 << 24);
    assert_eq!(l.read(reg::VERSION, 0), 0x50014);
    assert_eq!(l.read(reg::DFR, 0), 0xffff_ffff);
    assert_eq!(l.read(reg::SVR, 0), 0xff);
    for r in [
        reg::LVT_TIMER,
        reg::LVT_THERMAL,
        reg::LVT_PERF,
        reg::LVT_LINT0,
        reg::LVT_LINT1,
        reg::LVT_ERROR,
    ] {
        assert_eq!(l.read(r, 0), lvt::MASKED, "{r:#x}");
    }
    assert!(!l.software_enabled());
    assert_eq!(l.pending_vector(), None);
    assert_eq!(l.cpu(), 2);
}

#[test]
fn mmio_access_widths() {
    let mut l = enabled(0, 3);
    assert_eq!(l.mmio_read(0x20, 4, 0), 3 << 24);
    assert_eq!(l.mmio_read(0x23, 1, 0), 3);
    assert_eq!(
        l.mmio_read(0x24, 4, 0),
        0,
        "upper 12 bytes of a slot read 0"
    );
    // A byte write is ignored; a dword write at the slot start is taken.
    l.mmio_write(0x80, 1, 0x50, 0);
    assert_eq!(l.read(reg::TPR, 0), 0);
    l.mmio_write(0x80, 4, 0x50, 0);
    assert_eq!(l.read(reg::TPR, 0), 0x50);
    l.mmio_write(0x84, 4, 0x60, 0);
    assert_eq!(l.read(reg::TPR, 0), 0x50);
}

#[test]
fn fixed_interrupt_priority_and_eoi() {
    let mut l = enabled(0, 0);
    l.accept_fixed(0x31, false);
    l.accept_fixed(0x45, false);
    l.accept_fixed(0x41, false);
    assert_eq!(l.read(reg::IRR + 0x10, 0), 1 << 0x11);
    assert_eq!(l.read(reg::IRR + 0x20, 0), (1 << 5) | (1 << 1));
    assert_eq!(l.pending_vector(), Some(0x45));
    assert_eq!(l.acknowledge(), Some(0x45));
    assert_eq!(l.read(reg::ISR + 0x20, 0), 1 << 5);
    assert_eq!(l.ppr(), 0x40);
    // 0x41 is in the same class as the in-service 0x45: blocked.
    assert_eq!(l.pending_vector(), None);
    assert!(!l.has_event());
    // A higher class preempts.
    l.accept_fixed(0x50, false);
    assert_eq!(l.acknowledge(), Some(0x50));
    assert_eq!(l.write(reg::EOI, 0, 0), LapicEffect::None);
    assert_eq!(l.ppr(), 0x40);
    l.write(reg::EOI, 0, 0);
    assert_eq!(l.ppr(), 0);
    assert_eq!(l.acknowledge(), Some(0x41));
    l.write(reg::EOI, 0, 0);
    assert_eq!(l.acknowledge(), Some(0x31));
    l.write(reg::EOI, 0, 0);
    assert_eq!(l.acknowledge(), None);
    // An EOI with nothing in service does nothing.
    assert_eq!(l.write(reg::EOI, 0, 0), LapicEffect::None);
}

#[test]
fn task_priority_blocks_lower_classes() {
    let mut l = enabled(0, 0);
    l.write(reg::TPR, 0x50, 0);
    l.accept_fixed(0x55, false);
    assert_eq!(l.pending_vector(), None, "same class as TPR is blocked");
    l.accept_fixed(0x61, false);
    assert_eq!(l.pending_vector(), Some(0x61));
    assert_eq!(l.read(reg::PPR, 0), 0x50);
    l.write(reg::TPR, 0, 0);
    assert_eq!(l.acknowledge(), Some(0x61));
    assert_eq!(l.read(reg::PPR, 0), 0x60);
}

#[test]
fn level_triggered_eoi_is_broadcast() {
    let mut l = enabled(0, 0);
    l.accept_fixed(0x60, true);
    assert_eq!(l.read(reg::TMR + 0x30, 0), 1);
    assert_eq!(l.acknowledge(), Some(0x60));
    assert_eq!(l.write(reg::EOI, 0, 0), LapicEffect::Eoi(0x60));
    assert_eq!(l.read(reg::TMR + 0x30, 0), 0);
    // An edge interrupt on the same vector clears TMR.
    l.accept_fixed(0x60, true);
    l.accept_fixed(0x60, false);
    l.acknowledge();
    assert_eq!(l.write(reg::EOI, 0, 0), LapicEffect::None);
}

#[test]
fn illegal_vectors_set_esr_and_raise_the_error_lvt() {
    let mut l = enabled(0, 0);
    l.write(reg::LVT_ERROR, 0xfe, 0);
    l.accept_fixed(3, false);
    assert_eq!(l.read(reg::ESR, 0), 0, "not latched yet");
    l.write(reg::ESR, 0, 0);
    assert_eq!(l.read(reg::ESR, 0), esr::RECEIVE_ILLEGAL_VECTOR);
    l.write(reg::ESR, 0, 0);
    assert_eq!(l.read(reg::ESR, 0), 0);
    assert_eq!(l.acknowledge(), Some(0xfe));
    // Sending an illegal fixed IPI.
    l.write(reg::ICR_LOW, 0x05, 0);
    l.write(reg::ESR, 0, 0);
    assert_eq!(l.read(reg::ESR, 0), esr::SEND_ILLEGAL_VECTOR);
}

#[test]
fn software_disabled_apic_drops_fixed_interrupts_and_masks_lvts() {
    let mut l = Lapic::new(0, 0);
    l.accept_fixed(0x40, false);
    assert_eq!(l.pending_vector(), None);
    l.write(reg::LVT_LINT0, lvt::DM_EXTINT, 0);
    assert_eq!(l.read(reg::LVT_LINT0, 0), lvt::DM_EXTINT | lvt::MASKED);
    let mut l = enabled(0, 0);
    l.write(reg::LVT_LINT0, lvt::DM_EXTINT, 0);
    assert!(l.accepts_extint());
    l.write(reg::SVR, 0xff, 0);
    assert!(!l.accepts_extint());
    assert_eq!(l.read(reg::LVT_LINT0, 0), lvt::DM_EXTINT | lvt::MASKED);
}

#[test]
fn virtual_wire_passes_extint_even_before_software_enable() {
    let mut l = Lapic::new(0, 0);
    assert!(!l.accepts_extint());
    l.set_virtual_wire();
    assert!(l.accepts_extint());
    assert_eq!(l.read(reg::LVT_LINT1, 0), lvt::DM_NMI);
    l.set_lint(1, true);
    assert!(l.take_nmi());
    assert!(!l.take_nmi());
    l.set_lint(1, true);
    assert!(!l.take_nmi(), "only edges");
}

#[test]
fn logical_and_destination_registers() {
    let mut l = enabled(1, 1);
    l.write(reg::LDR, 0x0200_00ff, 0);
    assert_eq!(l.read(reg::LDR, 0), 0x0200_0000);
    assert!(l.matches(&Destination::Logical(0x03)));
    assert!(!l.matches(&Destination::Logical(0x01)));
    assert!(l.matches(&Destination::Logical(0xff)));
    l.write(reg::DFR, 0x0000_0000, 0);
    assert_eq!(l.read(reg::DFR, 0), 0x0fff_ffff);
    l.write(reg::LDR, 0x1200_0000, 0); // cluster 1, member bit 1
    assert!(l.matches(&Destination::Logical(0x13)));
    assert!(!l.matches(&Destination::Logical(0x23)));
    assert!(!l.matches(&Destination::Logical(0x11)));
    assert!(l.matches(&Destination::Physical(1)));
    assert!(l.matches(&Destination::Physical(0xff)));
    assert!(!l.matches(&Destination::Physical(0)));
    assert!(l.matches(&Destination::Only(1)));
    assert!(!l.matches(&Destination::AllBut(1)));
    assert!(l.matches(&Destination::AllBut(0)));
}

fn four() -> Vec<Lapic> {
    (0..4)
        .map(|k| {
            let mut l = enabled(k, k as u8);
            l.write(reg::LDR, 1 << (24 + k), 0);
            l
        })
        .collect()
}

#[test]
fn ipis_with_every_shorthand() {
    let mut ls = four();
    let send = |ls: &mut Vec<Lapic>, from: usize, high: u32, low: u32| {
        ls[from].write(reg::ICR_HIGH, high, 0);
        match ls[from].write(reg::ICR_LOW, low, 0) {
            LapicEffect::Ipi(m) => route(ls, &m),
            e => panic!("no IPI: {e:?}"),
        }
    };
    assert_eq!(send(&mut ls, 0, 2 << 24, 0x40), vec![2]);
    assert_eq!(send(&mut ls, 0, 0, 0x41 | icr::SELF), vec![0]);
    assert_eq!(send(&mut ls, 1, 0, 0x42 | icr::ALL), vec![0, 1, 2, 3]);
    assert_eq!(send(&mut ls, 1, 0, 0x43 | icr::ALL_BUT_SELF), vec![0, 2, 3]);
    assert_eq!(
        send(&mut ls, 0, 0x0c << 24, 0x44 | icr::LOGICAL),
        vec![2, 3]
    );
    assert_eq!(send(&mut ls, 0, 0xff << 24, 0x45), vec![0, 1, 2, 3]);
    assert_eq!(ls[2].pending_vector(), Some(0x45));
    assert_eq!(ls[0].read(reg::ICR_LOW, 0) & icr::DELIVERY_STATUS, 0);
    // Lowest priority: CPU 1 and 3 match; CPU 1 has the higher TPR.
    ls[1].write(reg::TPR, 0x20, 0);
    assert_eq!(
        send(&mut ls, 0, 0x0a << 24, 0x46 | (1 << 8) | icr::LOGICAL),
        vec![3]
    );
}

#[test]
fn init_sipi_sequence() {
    let mut ls = four();
    ls[2].accept_fixed(0x40, false);
    let mut send = |low: u32| {
        ls[0].write(reg::ICR_HIGH, 2 << 24, 0);
        match ls[0].write(reg::ICR_LOW, low, 0) {
            LapicEffect::Ipi(m) => {
                route(&mut ls, &m);
            }
            LapicEffect::None => {}
            e => panic!("{e:?}"),
        }
    };
    // INIT assert (level, assert), then de-assert (level, no assert): the second is a no-op.
    send(0x0000_c500);
    send(0x0000_8500);
    // SIPI to page 0x9a, twice.
    send(0x0000_069a);
    send(0x0000_069a);
    let l = &mut ls[2];
    assert!(l.take_init());
    assert!(!l.take_init());
    assert_eq!(l.take_sipi(), Some(0x9a));
    assert_eq!(l.take_sipi(), None, "the second SIPI is ignored");
    assert!(!l.waiting_for_sipi());
    // INIT reset the APIC but kept its ID.
    assert_eq!(l.read(reg::ID, 0), 2 << 24);
    assert_eq!(l.read(reg::SVR, 0), 0xff);
    assert_eq!(l.read(reg::IRR + 0x20, 0), 0);
    assert_eq!(l.read(reg::LDR, 0), 0);
}

#[test]
fn a_sipi_without_init_is_ignored() {
    let mut l = enabled(1, 1);
    l.receive(&ApicMessage {
        vector: 0x10,
        mode: DeliveryMode::StartUp,
        dest: Destination::Physical(1),
        level: false,
    });
    assert_eq!(l.take_sipi(), None);
    l.set_wait_for_sipi(true);
    l.receive(&ApicMessage {
        vector: 0x10,
        mode: DeliveryMode::StartUp,
        dest: Destination::Physical(1),
        level: false,
    });
    assert_eq!(l.take_sipi(), Some(0x10));
}

#[test]
fn nmi_and_extint_messages() {
    let mut l = enabled(0, 0);
    for mode in [DeliveryMode::Nmi, DeliveryMode::ExtInt] {
        l.receive(&ApicMessage {
            vector: 0,
            mode,
            dest: Destination::Physical(0),
            level: false,
        });
    }
    assert!(l.has_event());
    assert!(l.take_nmi());
    assert!(l.take_extint());
    assert!(!l.has_event());
    // NMI IPIs are sent whatever their vector.
    l.write(reg::ICR_HIGH, 0, 0);
    assert!(matches!(
        l.write(reg::ICR_LOW, 0x400, 0),
        LapicEffect::Ipi(ApicMessage {
            mode: DeliveryMode::Nmi,
            ..
        })
    ));
}

#[test]
fn divide_configuration() {
    assert_eq!(timer_divisor(0b0000), 2);
    assert_eq!(timer_divisor(0b0001), 4);
    assert_eq!(timer_divisor(0b0010), 8);
    assert_eq!(timer_divisor(0b0011), 16);
    assert_eq!(timer_divisor(0b1000), 32);
    assert_eq!(timer_divisor(0b1001), 64);
    assert_eq!(timer_divisor(0b1010), 128);
    assert_eq!(timer_divisor(0b1011), 1);
}

/// Nanoseconds per crystal tick (25 MHz).
const TICK: u64 = 40;

#[test]
fn one_shot_timer() {
    let mut l = enabled(0, 0);
    l.write(reg::TIMER_DIVIDE, 0b1011, 0); // divide by 1
    l.write(reg::LVT_TIMER, 0x30, 0);
    l.write(reg::TIMER_INITIAL, 100, 1000);
    assert_eq!(l.next_deadline(), Some(1000 + 100 * TICK));
    assert_eq!(l.read(reg::TIMER_CURRENT, 1000), 100);
    assert_eq!(l.read(reg::TIMER_CURRENT, 1000 + 10 * TICK), 90);
    assert_eq!(l.read(reg::TIMER_CURRENT, 1000 + 10 * TICK + 39), 90);
    assert!(!l.poll_timer(1000 + 100 * TICK - 1));
    assert_eq!(l.read(reg::TIMER_CURRENT, 1000 + 100 * TICK), 0);
    assert!(l.poll_timer(1000 + 100 * TICK));
    assert_eq!(l.pending_vector(), Some(0x30));
    assert_eq!(l.next_deadline(), None);
    assert_eq!(l.read(reg::TIMER_CURRENT, 1_000_000), 0);
    assert!(!l.poll_timer(1_000_000));
    // Writing 0 stops a running timer.
    l.write(reg::TIMER_INITIAL, 100, 0);
    l.write(reg::TIMER_INITIAL, 0, 10);
    assert_eq!(l.next_deadline(), None);
}

#[test]
fn periodic_timer_reloads_and_coalesces_missed_periods() {
    let mut l = enabled(0, 0);
    l.write(reg::TIMER_DIVIDE, 0b0000, 0); // divide by 2: 80 ns per count
    l.write(reg::LVT_TIMER, lvt::TIMER_PERIODIC | 0x31, 0);
    l.write(reg::TIMER_INITIAL, 10, 0);
    let period = 10 * 2 * TICK;
    assert_eq!(l.next_deadline(), Some(period));
    assert!(l.poll_timer(period));
    assert_eq!(l.next_deadline(), Some(2 * period));
    assert_eq!(l.read(reg::TIMER_CURRENT, period), 10);
    assert_eq!(l.read(reg::TIMER_CURRENT, period + 80), 9);
    assert_eq!(l.acknowledge(), Some(0x31));
    l.write(reg::EOI, 0, 0);
    // Poll late, 3.5 periods later: one interrupt, next deadline on the period grid.
    assert!(l.poll_timer(4 * period + period / 2));
    assert_eq!(l.next_deadline(), Some(5 * period));
    assert_eq!(l.acknowledge(), Some(0x31));
    assert_eq!(l.acknowledge(), None);
    // Reading between reloads without polling still counts from the initial count.
    assert_eq!(l.read(reg::TIMER_CURRENT, 5 * period + 160), 8);
}

#[test]
fn masked_timer_counts_without_interrupting() {
    let mut l = enabled(0, 0);
    l.write(reg::TIMER_DIVIDE, 0b1011, 0);
    l.write(reg::LVT_TIMER, lvt::MASKED | 0x30, 0);
    l.write(reg::TIMER_INITIAL, 5, 0);
    assert!(l.poll_timer(5 * TICK));
    assert_eq!(l.pending_vector(), None);
}

#[test]
fn changing_the_divider_keeps_the_count() {
    let mut l = enabled(0, 0);
    l.write(reg::TIMER_DIVIDE, 0b1011, 0); // by 1
    l.write(reg::LVT_TIMER, 0x30, 0);
    l.write(reg::TIMER_INITIAL, 100, 0);
    l.write(reg::TIMER_DIVIDE, 0b0001, 50 * TICK); // by 4 with 50 left
    assert_eq!(l.read(reg::TIMER_CURRENT, 50 * TICK), 50);
    assert_eq!(l.read(reg::TIMER_DIVIDE, 0), 1);
    assert_eq!(l.next_deadline(), Some(50 * TICK + 50 * 4 * TICK));
}

#[test]
fn tsc_deadline_timer() {
    let mut l = enabled(0, 0);
    // Not in deadline mode: the MSR reads 0 and ignores writes.
    l.write_tsc_deadline(5000, 0, 0);
    assert_eq!(l.read_tsc_deadline(), 0);
    assert_eq!(l.next_deadline(), None);
    l.write(reg::LVT_TIMER, lvt::TIMER_TSC_DEADLINE | 0xec, 0);
    // The initial count is ignored in deadline mode.
    l.write(reg::TIMER_INITIAL, 10, 0);
    assert_eq!(l.read(reg::TIMER_INITIAL, 0), 0);
    // The CPU's TSC is 1000 ahead of virtual time (a TSC offset).
    l.write_tsc_deadline(6000, 1100, 100);
    assert_eq!(l.read_tsc_deadline(), 6000);
    assert_eq!(l.next_deadline(), Some(5000));
    assert_eq!(l.read(reg::TIMER_CURRENT, 200), 0);
    assert!(!l.poll_timer(4999));
    assert!(l.poll_timer(5000));
    assert_eq!(l.read_tsc_deadline(), 0, "cleared when fired");
    assert_eq!(l.pending_vector(), Some(0xec));
    // A deadline in the past fires at the next poll; 0 disarms.
    l.write_tsc_deadline(10, 1100, 100);
    assert_eq!(l.next_deadline(), Some(100));
    l.write_tsc_deadline(0, 1100, 100);
    assert_eq!(l.next_deadline(), None);
    // Leaving deadline mode disarms.
    l.write_tsc_deadline(9000, 1100, 100);
    l.write(reg::LVT_TIMER, 0xec, 200);
    assert_eq!(l.next_deadline(), None);
    assert_eq!(l.read_tsc_deadline(), 0);
}

#[test]
fn switching_one_shot_to_periodic_keeps_counting() {
    let mut l = enabled(0, 0);
    l.write(reg::TIMER_DIVIDE, 0b1011, 0);
    l.write(reg::LVT_TIMER, 0x30, 0);
    l.write(reg::TIMER_INITIAL, 10, 0);
    l.write(reg::LVT_TIMER, lvt::TIMER_PERIODIC | 0x30, 5 * TICK);
    assert!(l.poll_timer(10 * TICK));
    assert_eq!(l.next_deadline(), Some(20 * TICK));
}

#[test]
fn state_round_trip() {
    let mut l = enabled(3, 9);
    l.accept_fixed(0x77, true);
    l.write(reg::LVT_TIMER, 0x30, 0);
    l.write(reg::TIMER_INITIAL, 1234, 0);
    let s = l.state();
    let back = Lapic::from_state(3, s.clone());
    assert_eq!(back, l);
    assert_eq!(back.state(), s);
}

/// An enabled APIC switched to x2APIC mode through IA32_APIC_BASE.
fn x2(cpu: u32, id: u8) -> Lapic {
    let mut l = enabled(cpu, id);
    l.write_apic_base(LAPIC_BASE | apic_base::ENABLE | apic_base::EXTD);
    assert!(l.x2apic());
    l
}

#[test]
fn x2apic_msrs_need_x2apic_mode() {
    let mut l = enabled(0, 1);
    assert_eq!(l.x2apic_rdmsr(0x802, 0), None, "#GP in xAPIC mode");
    assert_eq!(l.x2apic_wrmsr(0x808, 0x20, 0), Err(()));
    // ENABLE alone is xAPIC mode.
    l.write_apic_base(LAPIC_BASE | apic_base::ENABLE);
    assert!(!l.x2apic());
    let l = x2(0, 1);
    assert_eq!(l.x2apic_rdmsr(0x802, 0), Some(1));
    assert_eq!(l.x2apic_rdmsr(0x7ff, 0), None);
    assert_eq!(l.x2apic_rdmsr(0x900, 0), None);
}

#[test]
fn x2apic_id_ldr_and_absent_registers() {
    let mut l = x2(0, 0x25);
    assert_eq!(
        l.x2apic_rdmsr(0x802, 0),
        Some(0x25),
        "ID is 32 bits, not << 24"
    );
    assert_eq!(l.x2apic_rdmsr(0x803, 0), Some(LAPIC_VERSION as u64));
    // Cluster 2, member bit 5.
    assert_eq!(l.x2apic_rdmsr(0x80d, 0), Some(0x0002_0020));
    // Read-only: ID, version, LDR, PPR, ISR/TMR/IRR, current count.
    for msr in [0x802, 0x803, 0x80a, 0x80d, 0x810, 0x818, 0x820, 0x839] {
        assert_eq!(l.x2apic_wrmsr(msr, 0, 0), Err(()), "{msr:#x}");
    }
    // Absent: DFR, the ICR's old high half, the CMCI LVT, reserved slots.
    for msr in [0x80e, 0x831, 0x82f, 0x800, 0x804, 0x840, 0x8ff] {
        assert_eq!(l.x2apic_rdmsr(msr, 0), None, "{msr:#x}");
        assert_eq!(l.x2apic_wrmsr(msr, 0, 0), Err(()), "{msr:#x}");
    }
    // Write-only: EOI and SELF IPI.
    assert_eq!(l.x2apic_rdmsr(0x80b, 0), None);
    assert_eq!(l.x2apic_rdmsr(0x83f, 0), None);
    // EOI and ESR take only 0; bits 63:32 are reserved but for the ICR.
    assert_eq!(l.x2apic_wrmsr(0x80b, 1, 0), Err(()));
    assert_eq!(l.x2apic_wrmsr(0x80b, 0, 0), Ok(LapicEffect::None));
    assert_eq!(l.x2apic_wrmsr(0x828, 4, 0), Err(()));
    assert_eq!(l.x2apic_wrmsr(0x808, 1 << 32, 0), Err(()));
    // TPR round trip, and PPR follows it.
    assert_eq!(l.x2apic_wrmsr(0x808, 0x40, 0), Ok(LapicEffect::None));
    assert_eq!(l.x2apic_rdmsr(0x808, 0), Some(0x40));
    assert_eq!(l.x2apic_rdmsr(0x80a, 0), Some(0x40));
}

#[test]
fn x2apic_mode_turns_the_page_off() {
    let mut l = x2(0, 3);
    assert_eq!(l.mmio_read(0x20, 4, 0), 0, "the page is not decoded");
    assert_eq!(l.mmio_write(0x80, 4, 0xf0, 0), LapicEffect::None);
    assert_eq!(l.x2apic_rdmsr(0x808, 0), Some(0), "the MMIO write was lost");
    // Leaving x2APIC mode goes through the disabled state: a reset, ID kept.
    l.write_apic_base(LAPIC_BASE);
    assert!(!l.x2apic());
    assert_eq!(l.mmio_read(0x20, 4, 0), 3 << 24);
    assert!(!l.software_enabled());
}

#[test]
fn x2apic_icr_is_one_64_bit_msr_with_a_32_bit_destination() {
    let mut l = x2(0, 0);
    // Fixed, physical, vector 0x31 to x2APIC ID 2.
    let e = l.x2apic_wrmsr(0x830, 2 << 32 | 0x31, 0).unwrap();
    let LapicEffect::Ipi(m) = e else {
        panic!("{e:?}")
    };
    assert_eq!(m.dest, Destination::X2Physical(2));
    assert_eq!(m.vector, 0x31);
    assert_eq!(l.x2apic_rdmsr(0x830, 0), Some(2 << 32 | 0x31));
    // Logical: cluster 0, members 1 and 2.
    let e = l
        .x2apic_wrmsr(0x830, 0b110 << 32 | icr::LOGICAL as u64 | 0x32, 0)
        .unwrap();
    let LapicEffect::Ipi(m) = e else {
        panic!("{e:?}")
    };
    assert_eq!(m.dest, Destination::X2Logical(0b110));
    // Routing: four x2APICs; the logical message reaches CPUs 1 and 2.
    let mut apics: Vec<Lapic> = (0..4).map(|k| x2(k, k as u8)).collect();
    assert_eq!(route(&mut apics, &m), vec![1, 2]);
    assert_eq!(apics[1].pending_vector(), Some(0x32));
    let all = ApicMessage {
        dest: Destination::X2Physical(u32::MAX),
        ..m
    };
    assert_eq!(route(&mut apics, &all), vec![0, 1, 2, 3]);
    let one = ApicMessage {
        dest: Destination::X2Physical(3),
        ..m
    };
    assert_eq!(route(&mut apics, &one), vec![3]);
}

#[test]
fn x2apic_self_ipi() {
    let mut l = x2(1, 1);
    let e = l.x2apic_wrmsr(0x83f, 0x45, 0).unwrap();
    assert_eq!(
        e,
        LapicEffect::Ipi(ApicMessage {
            vector: 0x45,
            mode: DeliveryMode::Fixed,
            dest: Destination::Only(1),
            level: false,
        })
    );
    assert_eq!(
        l.x2apic_wrmsr(0x83f, 0x145, 0),
        Err(()),
        "bits 31:8 reserved"
    );
    // An illegal vector is an error, not an IPI.
    assert_eq!(l.x2apic_wrmsr(0x83f, 5, 0), Ok(LapicEffect::None));
    assert_eq!(l.x2apic_wrmsr(0x828, 0, 0), Ok(LapicEffect::None));
    assert_eq!(
        l.x2apic_rdmsr(0x828, 0),
        Some(esr::SEND_ILLEGAL_VECTOR as u64)
    );
}

#[test]
fn x2apic_mode_survives_init() {
    let mut l = x2(0, 0x13);
    l.receive(&ApicMessage {
        vector: 0,
        mode: DeliveryMode::Init,
        dest: Destination::All,
        level: false,
    });
    assert!(l.take_init());
    assert!(l.x2apic());
    assert_eq!(l.x2apic_rdmsr(0x80d, 0), Some(0x0001_0008));
}

/// A lowest-priority message of `vector` to logical mask `mask` (flat model: one bit per
/// APIC of [`four`]); the APICs that got it.
fn lowest(ls: &mut [Lapic], mask: u8, vector: u8) -> Vec<usize> {
    let msg = ApicMessage {
        vector,
        mode: DeliveryMode::LowestPriority,
        dest: Destination::Logical(mask),
        level: false,
    };
    route(ls, &msg)
}

#[test]
fn lowest_priority_goes_to_the_lowest_processor_priority() {
    let mut ls = four();
    // All equal: the lowest APIC ID.
    assert_eq!(lowest(&mut ls, 0x0e, 0x50), vec![1]);
    // CPU 1 now has 0x50 requested: the focus processor for 0x50 whatever its priority.
    ls[1].write(reg::TPR, 0x80, 0);
    assert_eq!(lowest(&mut ls, 0x0e, 0x50), vec![1]);
    // Another vector: CPU 1 has the highest priority, 2 and 3 tie at 0: APIC ID 2.
    assert_eq!(lowest(&mut ls, 0x0e, 0x51), vec![2]);
    // TPR 0x30 on CPU 2 and an interrupt in service (class 4) on CPU 3: CPU 2 is lower.
    ls[2].write(reg::TPR, 0x30, 0);
    ls[3].accept_fixed(0x42, false);
    assert_eq!(ls[3].acknowledge(), Some(0x42));
    assert_eq!(ls[3].ppr(), 0x40);
    assert_eq!(lowest(&mut ls, 0x0c, 0x60), vec![2]);
    // The sub-class counts: TPR 0x31 on CPU 2 against 0x30 on CPU 3 (after its EOI).
    ls[3].write(reg::EOI, 0, 0);
    ls[3].write(reg::TPR, 0x30, 0);
    ls[2].write(reg::TPR, 0x31, 0);
    assert_eq!(lowest(&mut ls, 0x0c, 0x61), vec![3]);
}

#[test]
fn lowest_priority_focus_checking_and_disabled_apics() {
    let mut ls = four();
    // CPU 3 has 0x70 in service but focus checking disabled: not the focus, and its PPR
    // (0x70) loses against CPU 2's 0.
    ls[3].write(reg::SVR, 0x1ff | svr::FOCUS_DISABLED, 0);
    ls[3].accept_fixed(0x70, false);
    assert_eq!(ls[3].acknowledge(), Some(0x70));
    assert_eq!(lowest(&mut ls, 0x0c, 0x70), vec![2]);
    // With focus checking on, CPU 3 is the focus processor (against CPU 1, at PPR 0).
    ls[3].write(reg::SVR, 0x1ff, 0);
    assert_eq!(lowest(&mut ls, 0x0a, 0x70), vec![3]);
    // Both CPU 2 (0x70 requested, from the first message) and CPU 3 are focus processors:
    // the lower APIC ID.
    assert_eq!(lowest(&mut ls, 0x0c, 0x70), vec![2]);
    // A software-disabled APIC is passed over while an enabled one is named...
    ls[0].write(reg::SVR, 0xff, 0);
    assert_eq!(lowest(&mut ls, 0x03, 0x71), vec![1]);
    // ...but is chosen (and drops the interrupt) when it is the only one.
    assert_eq!(lowest(&mut ls, 0x01, 0x72), vec![0]);
    assert_eq!(ls[0].pending_vector(), None);
    // Ties go by APIC ID, not CPU index: give CPU 2 ID 0 and CPU 0 ID 2.
    let mut ls = four();
    ls[0].write(reg::ID, 2 << 24, 0);
    ls[2].write(reg::ID, 0, 0);
    assert_eq!(lowest(&mut ls, 0x05, 0x73), vec![2]);
    assert_eq!(lowest_priority_target(&ls, &[], 0x73), None);
}
