//! Decoding: the blocks of decoded instructions the run loop executes, fetched through the
//! MMU and kept in the code cache, and the disassembly used in error reports.

use iced_x86::{Code, Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter};

use super::{fast, Cpu, Group};
use crate::bus::Bus;
use crate::code_cache::{check, BlockId, BlockRef, CodeCache, DecodedInsn};
use crate::fault::{Exit, Fault, StopReason};
use crate::mmu::Intent;
use crate::ram_window::RamWindow;
use crate::state::CpuMode;

/// Bytes decoded per block at most (one page plus a straddling instruction).
const MAX_BLOCK_INSNS: usize = 64;

// `DecodedInsn::idx` (a `u8`) holds an instruction's position in its block.
const _: () = assert!(MAX_BLOCK_INSNS <= 256);

impl Cpu {
    /// Find or decode the block at the current RIP (with its physical address). The links
    /// of the block fetched last (`last_block`) are tried first; it learns the block found
    /// as a successor, which becomes the block fetched last.
    ///
    /// Out of line on purpose: inlined into the run loop it saved host instructions but
    /// reshaped the loop's code (the memory accesses' TLB checks came to share branches), and
    /// compute ran ~5% slower for it.
    #[inline(never)]
    pub(super) fn fetch_block<B: Bus>(
        &mut self,
        bus: &mut B,
        code: &mut CodeCache,
        mode: CpuMode,
        cpl: u8,
    ) -> Result<(BlockRef, u64), Exit> {
        if !code.breakpoints().is_empty() {
            self.note_breakpoints(bus, code, mode, cpl);
        }
        let prev = self.last_block;
        let rip = self.fetch_address(mode);
        let pa = crate::mmu::translate(&self.state, &mut self.tlb, bus, rip, Intent::Execute, cpl)?;
        let bitness = mode.bitness();
        if let (true, Some(p)) = (code.chaining_allowed(), code.block(prev)) {
            // SAFETY: `p` is live in the cache now.
            if let Some(b) = unsafe { code.follow(p, pa, bitness) } {
                // SAFETY: just got from the cache.
                self.last_block = unsafe { b.id() };
                return Ok((b, pa));
            }
        }
        self.fetch_block_slow(bus, code, mode, cpl, prev, rip, pa)
    }

    /// [`Cpu::fetch_block`] when no link of `prev` leads to the block at `pa`: the ordinary
    /// lookup, or a decode. Out of line so that the run loop carries only the chained path.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn fetch_block_slow<B: Bus>(
        &mut self,
        bus: &mut B,
        code: &mut CodeCache,
        mode: CpuMode,
        cpl: u8,
        prev: BlockId,
        rip: u64,
        pa: u64,
    ) -> Result<(BlockRef, u64), Exit> {
        let bitness = mode.bitness();
        // SAFETY: `code.block` gives a block live in the cache now.
        if let Some(b) = unsafe { code.find_and_link(code.block(prev), pa, bitness) } {
            // SAFETY: just got from the cache.
            self.last_block = unsafe { b.id() };
            return Ok((b, pa));
        }
        // Blocks dropped since the last reclaim may be freed now, and every block dropped if
        // the native arena is full: this CPU executes none, nor does any other (a machine's
        // CPUs share its one cache and run on one thread, one `Cpu::run` at a time).
        code.reclaim();
        // The bytes from here to the end of the page, plus 15 bytes of the next page when it
        // is mapped (an instruction may straddle the boundary).
        let in_page = 0x1000 - (pa & 0xfff) as usize;
        let next_lin = rip.wrapping_add(in_page as u64);
        let next_pa = crate::mmu::translate(
            &self.state,
            &mut self.tlb,
            bus,
            next_lin,
            Intent::Execute,
            cpl,
        )
        .ok();
        let gathered;
        let bytes = match code_in_place(bus.ram(), pa, in_page, next_pa) {
            Some(b) => b,
            None => {
                gathered = gather_code(bus, pa, in_page, next_pa);
                &gathered[..]
            }
        };
        let mut decoder = Decoder::with_ip(bitness, bytes, 0, DecoderOptions::NONE);
        // An undefined first instruction (`Some`), and whether it runs into an unmapped
        // page; handled once the decoder (which borrows the bus's RAM) is done.
        let mut undefined = None;
        let (mut insns, mut full) = code.take_scratch();
        let mut pages = [pa >> 12, pa >> 12];
        while insns.len() < MAX_BLOCK_INSNS {
            let start = decoder.position();
            if start >= in_page {
                break;
            }
            let mut insn = Instruction::default();
            decoder.decode_out(&mut insn);
            let len = insn.len();
            if insn.is_invalid() {
                if insns.is_empty() {
                    undefined = Some(start + 15 > bytes.len() && next_pa.is_none());
                }
                break;
            }
            if start + len > in_page {
                if let Some(npa) = next_pa {
                    pages[1] = npa >> 12;
                }
            }
            // Decoded at 0 relative to the block start: re-base so the decoded address
            // (branch targets, RIP-relative displacements) is relative to the instruction.
            rebase(&mut insn, start as u64);
            let group = code.group(insn.code());
            let (op, ops) = if insn.code() == Code::Pause {
                // Not a fast form but a scheduling rule of the run loop, so decided here
                // whether fast forms are on or off.
                (fast::Op::Pause, fast::Operands::default())
            } else if code.fast_paths() {
                fast::classify(&insn, group, bitness, start as u64)
            } else {
                (fast::generic(group), fast::Operands::default())
            };
            // A conditional branch continues the block along its fall-through path.
            let flow = insn.flow_control();
            let branch = flow == iced_x86::FlowControl::ConditionalBranch;
            let continues =
                flow == iced_x86::FlowControl::Next || (branch && group == Group::Control);
            let ends_block = group == Group::System || !continues;
            insns.push(DecodedInsn {
                // Below MAX_BLOCK_INSNS (64), so it fits.
                idx: insns.len() as u8,
                op,
                ops,
                len: len as u8,
                locked: insn.has_lock_prefix(),
                // A NOP's fast form (it may belong to an EXIT-checked group) does nothing.
                check: if may_call_bus(group) && op != fast::Op::Nop {
                    check::EXIT
                } else {
                    0
                } | if branch { check::BRANCH } else { 0 },
                off: start as u16,
                handler: fast::handler_index(op, &ops),
            });
            full.push(insn);
            if ends_block || start + len >= in_page {
                break;
            }
        }
        if let Some(unmapped) = undefined {
            code.return_scratch((insns, full));
            if unmapped {
                // The instruction runs into an unmapped page: fetch fault there.
                self.mmu_fetch_fault(bus, next_lin)?;
            }
            // A genuinely undefined opcode: the guest gets #UD.
            return Err(Exit::Fault(Fault::INVALID_OPCODE));
        }
        fast::fuse(&mut insns);
        if bitness == 64 {
            code.compile_native(&mut insns, &full);
        }
        let full_at = code.store_full(&mut full);
        // `insert` makes one allocation of exactly the block's header and instructions (a
        // vector grown by pushes would leave up to half its capacity unused, and the freed
        // smaller buffers as holes between blocks): the decoded code is many times the size
        // of the guest's, and the host's caches hold more of it the denser it lies.
        let id = code.insert(pa, bitness, &insns, full_at, pages);
        code.return_scratch((insns, full));
        // The block's pages may have just become code pages: no quick store may reach them.
        self.tlb.sync_code_pages(code);
        self.last_block = id;
        let new = code.block(id);
        if let (Some(p), Some(n)) = (code.block(prev), new) {
            // SAFETY: both live in the cache now (`prev` may be the new block itself, when
            // the previous one was dropped and its slot reused: a harmless link).
            unsafe { code.link(p, n) };
        }
        match new {
            Some(b) => Ok((b, pa)),
            // Just inserted, so it is there; say so rather than panic if it were not.
            None => Err(Exit::Stop(Box::new(StopReason::Unsupported {
                cpu: self.index,
                rip: self.state.rip,
                what: "a freshly decoded block vanished from the code cache".into(),
            }))),
        }
    }

    /// Breakpoints are set (see [`CodeCache::set_breakpoints`]): set the flag when the
    /// block about to run from the current rip may execute from one (one of its bytes is a
    /// breakpoint). Looked at before the block is fetched, so a fetch fault at a breakpoint
    /// counts. The block's length comes from the cache when it is there (after the same
    /// translation the fetch makes next, so nothing changes that the fetch would not
    /// change); a block not cached yet is decoded first.
    #[inline(never)]
    fn note_breakpoints<B: Bus>(
        &mut self,
        bus: &mut B,
        code: &mut CodeCache,
        mode: CpuMode,
        cpl: u8,
    ) {
        let rip = self.state.rip;
        let lin = self.fetch_address(mode);
        let Some(dist) = breakpoint_distance(code.breakpoints(), rip, mode.bitness()) else {
            return;
        };
        // A block ends in its page, or straddles into the next by at most 14 bytes.
        let span = 0x1000 - (lin & 0xfff) + 14;
        if dist >= span {
            return;
        }
        if dist > 0 {
            let len =
                crate::mmu::translate(&self.state, &mut self.tlb, bus, lin, Intent::Execute, cpl)
                    .ok()
                    .and_then(|pa| code.lookup(pa, mode.bitness()))
                    .and_then(|id| code.block(id))
                    .map(|b| {
                        // SAFETY: live in the cache, and read before anything else happens.
                        unsafe { b.insns() }.iter().map(|d| u64::from(d.len)).sum()
                    });
            let len = match len {
                Some(n) => Some(n),
                None => self.decode_for_breakpoints(bus, code, mode, cpl),
            };
            if len.is_some_and(|n| dist >= n) {
                return;
            }
        }
        code.note_breakpoint_hit();
    }

    /// The byte length of the block at the current rip, not cached yet: decoded (and cached)
    /// now, exactly as the fetch that follows would, with the breakpoints set aside so that
    /// this fetch does not look at them again. `None` when the fetch fails (it fails again
    /// next, which executes nothing).
    fn decode_for_breakpoints<B: Bus>(
        &mut self,
        bus: &mut B,
        code: &mut CodeCache,
        mode: CpuMode,
        cpl: u8,
    ) -> Option<u64> {
        let bps = code.breakpoints().to_vec();
        let hit = code.take_breakpoint_hit();
        code.set_breakpoints(&[]);
        let fetched = self.fetch_block(bus, code, mode, cpl);
        code.set_breakpoints(&bps);
        if hit {
            code.note_breakpoint_hit();
        }
        let (b, _) = fetched.ok()?;
        // SAFETY: just fetched, and read before anything else happens.
        Some(unsafe { b.insns() }.iter().map(|d| u64::from(d.len)).sum())
    }

    /// The linear address of the next instruction (CS base applies outside 64-bit mode).
    pub(super) fn fetch_address(&self, mode: CpuMode) -> u64 {
        match mode {
            CpuMode::Long64 => self.state.rip,
            _ => {
                self.state.seg[crate::state::SegReg::Cs as usize]
                    .base
                    .wrapping_add(self.state.rip)
                    & 0xffff_ffff
            }
        }
    }

    fn mmu_fetch_fault<B: Bus>(&mut self, bus: &mut B, lin: u64) -> Result<(), Exit> {
        let cpl = self.state.cpl();
        crate::mmu::translate(&self.state, &mut self.tlb, bus, lin, Intent::Execute, cpl)?;
        Ok(())
    }

    /// Disassemble the instruction at a virtual address, for error messages.
    pub fn disassemble_at<B: Bus>(&mut self, bus: &mut B, rip: u64) -> String {
        let mode = self.state.mode();
        let lin = match mode {
            CpuMode::Long64 => rip,
            _ => self.state.seg[crate::state::SegReg::Cs as usize]
                .base
                .wrapping_add(rip),
        };
        let mut bytes = Vec::new();
        let cpl = self.state.cpl();
        for k in 0..15u64 {
            match crate::mmu::translate(
                &self.state,
                &mut self.tlb,
                bus,
                lin + k,
                Intent::Execute,
                cpl,
            ) {
                Ok(pa) => read_code(bus, pa, 1, &mut bytes),
                Err(_) => break,
            }
        }
        if bytes.is_empty() {
            return "<unmapped>".to_string();
        }
        let mut decoder = Decoder::with_ip(mode.bitness(), &bytes, rip, DecoderOptions::NONE);
        let insn = decoder.decode();
        let hex: Vec<String> = bytes[..insn.len().max(1).min(bytes.len())]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{} [{}]", format_insn(&insn), hex.join(" "))
    }
}

/// How far ahead of `rip` the nearest of the sorted breakpoints `bps` lies, in the
/// instruction-pointer space of code size `bitness` (outside 64-bit mode the pointer wraps,
/// so a breakpoint below `rip` is ahead past the wrap). `None` without breakpoints.
fn breakpoint_distance(bps: &[u64], rip: u64, bitness: u32) -> Option<u64> {
    let k = bps.partition_point(|&b| b < rip);
    let ahead = bps.get(k).map(|&b| b - rip);
    let mask = match bitness {
        16 => 0xffff,
        32 => 0xffff_ffff,
        _ => u64::MAX,
    };
    let wrapped = bps
        .first()
        .filter(|&&b| mask != u64::MAX && b < rip && b <= mask)
        .map(|&b| b + (mask - rip) + 1);
    match (ahead, wrapped) {
        (Some(a), Some(w)) => Some(a.min(w)),
        (a, w) => a.or(w),
    }
}

/// The bytes a block at physical address `pa` is decoded from, read in place in RAM: the
/// `in_page` bytes to the end of its page, and the first 15 of the next page when it is
/// mapped (`next_pa`) and physically follows. `None` when they do not all lie in RAM so (the
/// next page elsewhere, or past the end of RAM): [`gather_code`] then copies them. Decoding
/// in place spares each decode a page-sized copy and allocation.
fn code_in_place(
    ram: RamWindow<'_>,
    pa: u64,
    in_page: usize,
    next_pa: Option<u64>,
) -> Option<&[u8]> {
    let len = match next_pa {
        None => in_page,
        Some(npa) if npa == pa.wrapping_add(in_page as u64) => in_page + 15,
        Some(_) => return None,
    };
    ram.into_slice(pa, len)
}

/// The bytes of [`code_in_place`] copied together: the page's, then the next page's (when
/// mapped, wherever it is); device memory and memory past RAM read as 0xff.
fn gather_code<B: Bus>(bus: &mut B, pa: u64, in_page: usize, next_pa: Option<u64>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(in_page + 15);
    read_code(bus, pa, in_page, &mut bytes);
    if let Some(npa) = next_pa {
        read_code(bus, npa, 15, &mut bytes);
    }
    bytes
}

/// Copy `n` bytes of physical memory (RAM only; device memory reads as 0xff) to `out`.
fn read_code<B: Bus>(bus: &mut B, pa: u64, n: usize, out: &mut Vec<u8>) {
    let ram = bus.ram();
    let start = usize::try_from(pa).unwrap_or(usize::MAX).min(ram.len());
    let avail = (ram.len() - start).min(n);
    out.extend_from_slice(ram.get(start as u64, avail).unwrap_or_default());
    out.resize(out.len() + (n - avail), 0xff);
}

/// Shift an instruction decoded at `start` within its block so that its own address is 0.
fn rebase(insn: &mut Instruction, start: u64) {
    if start == 0 {
        return;
    }
    let bitness_mask = |v: u64| v.wrapping_sub(start);
    insn.set_next_ip(insn.next_ip().wrapping_sub(start));
    use iced_x86::OpKind;
    for n in 0..insn.op_count() {
        match insn.op_kind(n) {
            OpKind::NearBranch16 => {
                insn.set_near_branch16(insn.near_branch16().wrapping_sub(start as u16))
            }
            OpKind::NearBranch32 => {
                insn.set_near_branch32(insn.near_branch32().wrapping_sub(start as u32))
            }
            OpKind::NearBranch64 => insn.set_near_branch64(bitness_mask(insn.near_branch64())),
            OpKind::Memory if insn.is_ip_rel_memory_operand() => {
                insn.set_memory_displacement64(insn.memory_displacement64().wrapping_sub(start));
            }
            _ => {}
        }
    }
}

/// Intel-syntax text of an instruction.
pub fn format_insn(insn: &Instruction) -> String {
    let mut out = String::new();
    IntelFormatter::new().format(insn, &mut out);
    out
}

/// Whether instructions of `group` may call the bus beyond RAM accesses (port I/O, MSRs,
/// time, randomness), which can make [`Bus::wants_exit`] true, set `next_rip` without
/// ending their block (a REP string instruction resuming later), or set the interrupt
/// shadow (STI). Memory-mapped I/O, which
/// any memory operand may reach, is handled where it happens (`memory.rs` asks the run
/// loop to look after the instruction).
fn may_call_bus(group: Group) -> bool {
    match group {
        Group::Data
        | Group::Alu
        | Group::Shift
        | Group::MulDiv
        | Group::Bits
        | Group::Control
        | Group::Stack
        | Group::Sse => false,
        Group::String | Group::Misc | Group::System | Group::Unimplemented => true,
    }
}

#[cfg(test)]
mod tests {
    use super::{breakpoint_distance, code_in_place};
    use crate::exec::RunExit;
    use crate::ram_window::RamWindow;
    use crate::testing::{TestMachine, CODE_BASE};
    use iced_x86::code_asm::*;

    /// The bytes decoded in place: to the end of the page, plus 15 of the next page only
    /// when it is mapped and physically follows, all in RAM; else none (they are gathered).
    #[test]
    fn code_is_read_in_place_only_where_it_lies_together_in_ram() {
        let mut ram: Vec<u8> = (0..0x3000u32).map(|k| k as u8).collect();
        let base = ram.as_ptr() as usize;
        let mut place = |pa: u64, in_page: usize, next_pa: Option<u64>| {
            code_in_place(RamWindow::from_slice(&mut ram), pa, in_page, next_pa)
                .map(|b| (b.as_ptr() as usize - base, b.len()))
        };
        assert_eq!(place(0x1ff0, 0x10, None), Some((0x1ff0, 0x10)));
        assert_eq!(place(0x1ff0, 0x10, Some(0x2000)), Some((0x1ff0, 0x1f)));
        // The next page elsewhere, or past the end of RAM.
        assert_eq!(place(0x1ff0, 0x10, Some(0x1000)), None);
        assert_eq!(place(0x2ff0, 0x10, None), Some((0x2ff0, 0x10)));
        assert_eq!(place(0x2ff0, 0x10, Some(0x3000)), None);
        assert_eq!(place(0x3000, 0x1000, None), None);
        assert_eq!(place(u64::MAX - 3, 0x4, None), None);
    }

    /// A machine running `f`'s code from virtual (and physical) address `at`.
    fn at(at: u64, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> TestMachine {
        let mut a = CodeAssembler::new(64).expect("64-bit assembler");
        f(&mut a).expect("assembling test code");
        let bytes = a.assemble(at).expect("assembling test code");
        let mut m = TestMachine::with_code(&[0xf4]);
        let end = (at as usize + bytes.len()).min(m.bus.ram.len());
        m.bus.ram[at as usize..end].copy_from_slice(&bytes[..end - at as usize]);
        m.cpu.state.rip = at;
        m
    }

    /// A block whose 10-byte MOV straddles into the next page, which physically follows:
    /// decoded in place, across the boundary.
    #[test]
    fn a_block_straddling_into_the_following_page() {
        let mut m = at(CODE_BASE + 0xffb, |x| {
            x.mov(rax, 0x1122_3344_5566_7788u64)?;
            x.add(rax, rbx)?;
            x.hlt()
        });
        m.cpu.state.gpr[3] = 1;
        assert_eq!(m.run(10), RunExit::Halted);
        assert_eq!(m.cpu.state.gpr[0], 0x1122_3344_5566_7789);
    }

    /// A block straddling into a virtual page mapped elsewhere in RAM: the instruction's
    /// last bytes come from where that page is, not from the physically following page.
    #[test]
    fn a_block_straddling_into_a_page_mapped_elsewhere() {
        const BOUNDARY: u64 = 0x20_0000;
        const ELSEWHERE: u64 = 0xa0_0000;
        let code = {
            let mut a = CodeAssembler::new(64).expect("64-bit assembler");
            a.mov(rax, 0x1122_3344_5566_7788u64).expect("mov");
            a.hlt().expect("hlt");
            a.assemble(BOUNDARY - 4).expect("assembling test code")
        };
        let mut m = TestMachine::with_code(&[0xf4]);
        // The second 2 MiB page (PD[1] of the boot tables) onto ELSEWHERE.
        let pd1 = 0x3000 + 8;
        m.bus.ram[pd1..pd1 + 8].copy_from_slice(&(ELSEWHERE | 0x83).to_le_bytes());
        let b = BOUNDARY as usize;
        m.bus.ram[b - 4..b].copy_from_slice(&code[..4]);
        m.bus.ram[ELSEWHERE as usize..ELSEWHERE as usize + code.len() - 4]
            .copy_from_slice(&code[4..]);
        // What follows physically: a different immediate and no HLT.
        m.bus.ram[b..b + 16].fill(0x99);
        m.cpu.state.rip = BOUNDARY - 4;
        m.cpu.flush_tlb();
        assert_eq!(m.run(10), RunExit::Halted);
        assert_eq!(m.cpu.state.gpr[0], 0x1122_3344_5566_7788);
    }

    /// A block at the end of RAM: it decodes to RAM's last byte; an instruction running past
    /// it reads 0xff there, as device memory does.
    #[test]
    fn a_block_at_the_end_of_ram() {
        let ram_end = 16u64 << 20;
        let mut m = at(ram_end - 8, |x| {
            x.mov(eax, 5u32)?;
            x.add(eax, eax)?;
            x.hlt()
        });
        assert_eq!(m.run(10), RunExit::Halted);
        assert_eq!(m.cpu.state.gpr[0], 10);
        // B8 imm32 with the immediate's last byte past RAM.
        let mut m = at(ram_end - 4, |x| x.mov(eax, 0x0033_2211u32));
        assert_eq!(m.run(1), RunExit::Budget);
        assert_eq!(m.cpu.state.gpr[0], 0xff33_2211);
    }

    #[test]
    fn breakpoint_distances_wrap_outside_64_bit_code() {
        let bps = [0x10, 0x2000, 0xffff_fff0];
        assert_eq!(breakpoint_distance(&bps, 0x10, 64), Some(0));
        assert_eq!(breakpoint_distance(&bps, 0x11, 64), Some(0x1fef));
        assert_eq!(breakpoint_distance(&bps, 0xffff_fff1, 64), None);
        // 32-bit: past 0xffff_ffff the pointer wraps to 0.
        assert_eq!(breakpoint_distance(&bps, 0xffff_fff1, 32), Some(0x1f));
        // 16-bit: 0x10 is 0x20 ahead of 0xfff0.
        assert_eq!(breakpoint_distance(&bps, 0xfff0, 16), Some(0x20));
        assert_eq!(breakpoint_distance(&[], 0x10, 16), None);
    }
}
