//! Memory accesses of an executing instruction: linear address → physical → RAM or MMIO,
//! with page-crossing splits, self-modifying-code detection and observer reports.

use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::Exit;
use crate::mmu::{self, Intent};
use crate::observer::{Access, AccessKind, Observer};
use crate::ram_window::RamWindow;
use crate::state::{cr0, SegReg};

/// The `size` (1, 2, 4 or 8) bytes of RAM at physical address `pa`, or `None` when the
/// range is not inside `ram`: one range check (an add and a compare).
#[inline(always)]
fn ram_bytes(ram: RamWindow<'_>, pa: u64, size: usize) -> Option<&mut [u8]> {
    ram.into_slice_mut(pa, size)
}

/// The little-endian value of the `size` bytes `at` ([`ram_bytes`]).
///
/// Matched on `size`, the caller's constant, not on the slice's length: each usual width is
/// then one fixed-size load whose chunk test folds away (a copy of a run-time length into a
/// buffer compiled to a call to `memcpy` on every guest load whose size the compiler could
/// not see, a few percent of a Linux boot).
#[inline(always)]
fn load_bytes(at: &[u8], size: usize) -> u64 {
    match size {
        8 => at.first_chunk::<8>().map_or(0, |b| u64::from_le_bytes(*b)),
        4 => at
            .first_chunk::<4>()
            .map_or(0, |b| u32::from_le_bytes(*b) as u64),
        1 => at.first().map_or(0, |&b| b as u64),
        2 => at
            .first_chunk::<2>()
            .map_or(0, |b| u16::from_le_bytes(*b) as u64),
        _ => at.iter().rev().fold(0u64, |v, &b| (v << 8) | u64::from(b)),
    }
}

/// Store the low `size` bytes of `value` into `at` ([`ram_bytes`]), little-endian (as in
/// [`load_bytes`]).
#[inline(always)]
fn store_bytes(at: &mut [u8], size: usize, value: u64) {
    match size {
        8 => {
            if let Some(b) = at.first_chunk_mut::<8>() {
                *b = value.to_le_bytes();
            }
        }
        4 => {
            if let Some(b) = at.first_chunk_mut::<4>() {
                *b = (value as u32).to_le_bytes();
            }
        }
        1 => {
            if let Some(b) = at.first_mut() {
                *b = value as u8;
            }
        }
        2 => {
            if let Some(b) = at.first_chunk_mut::<2>() {
                *b = (value as u16).to_le_bytes();
            }
        }
        _ => {
            for (k, b) in at.iter_mut().take(8).enumerate() {
                *b = (value >> (k * 8)) as u8;
            }
        }
    }
}

/// Load `size` bytes of RAM at physical address `pa`, or `None` when the range is not
/// inside `ram`.
#[inline(always)]
pub(super) fn ram_load(ram: RamWindow<'_>, pa: u64, size: usize) -> Option<u64> {
    Some(load_bytes(ram.into_slice(pa, size)?, size))
}

/// Store the low `size` bytes of `value` into RAM at physical address `pa`; `false`,
/// storing nothing, when the range is not inside `ram`.
#[inline(always)]
fn ram_store(ram: RamWindow<'_>, pa: u64, size: usize, value: u64) -> bool {
    match ram_bytes(ram, pa, size) {
        Some(at) => {
            store_bytes(at, size, value);
            true
        }
        None => false,
    }
}

impl<B: Bus, O: Observer> Exec<'_, B, O> {
    /// Translate a linear address for this instruction at the current privilege level.
    #[inline(always)]
    pub fn translate(&mut self, lin: u64, intent: Intent) -> Result<u64, Exit> {
        // The CPL (as `CpuState::cpl` computes it) and the TLB hit inline: this is on the
        // path of every memory access.
        let s = &self.cpu.state;
        let cpl = if s.cr0 & cr0::PE == 0 {
            0
        } else {
            (s.seg[SegReg::Cs as usize].selector & 3) as u8
        };
        let hit = if s.cr0 & cr0::PG != 0 {
            self.cpu.tlb.hit(s, lin, intent, cpl)
        } else {
            None
        };
        let pa = match hit {
            Some(pa) => pa,
            None => mmu::translate_slow(
                &self.cpu.state,
                &mut self.cpu.tlb,
                self.bus,
                lin,
                intent,
                cpl,
            )
            .map_err(Exit::Fault)?,
        };
        if intent == Intent::Write {
            // The store tags the TLB may grant now (a store to the page is allowed).
            self.cpu.tlb.note_write(lin, cpl, self.code);
        }
        Ok(pa)
    }

    /// Translate a linear address at a given privilege level (0 for implicit supervisor
    /// accesses such as descriptor-table reads).
    #[inline(always)]
    pub fn translate_at(&mut self, lin: u64, intent: Intent, cpl: u8) -> Result<u64, Exit> {
        mmu::translate(
            &self.cpu.state,
            &mut self.cpu.tlb,
            self.bus,
            lin,
            intent,
            cpl,
        )
        .map_err(Exit::Fault)
    }

    /// Read `size` (1..=8) bytes of physical memory.
    #[inline(always)]
    pub fn phys_read(&mut self, pa: u64, size: usize) -> u64 {
        if !self.bus.is_mmio(pa) {
            if let Some(v) = ram_load(self.bus.ram(), pa, size) {
                return v;
            }
        }
        // A device may now want the CPU to stop: have the run loop look after this
        // instruction.
        self.stop_after = true;
        let clock = self.clock();
        self.bus.mmio_read(clock, pa, size as u8)
    }

    /// Write `size` (1..=8) bytes of physical memory.
    #[inline(always)]
    pub fn phys_write(&mut self, pa: u64, size: usize, value: u64) {
        if !self.bus.is_mmio(pa) {
            let page = pa >> 12;
            let last = (pa + size as u64 - 1) >> 12;
            // The accesses of `write` never cross a page; test the second page only when
            // another caller's does.
            if self.code.is_code_page(page) || (last != page && self.code.is_code_page(last)) {
                self.code_written(page, last);
            }
            if ram_store(self.bus.ram(), pa, size, value) {
                return;
            }
        }
        self.stop_after = true;
        let clock = self.clock();
        self.bus.mmio_write(clock, pa, size as u8, value)
    }

    /// A write hit cached code on `page` or `last`: drop the blocks there. Rare, so kept
    /// out of the inlined store path.
    #[cold]
    #[inline(never)]
    fn code_written(&mut self, page: u64, last: u64) {
        self.code.invalidate_page(page);
        self.code.invalidate_page(last);
        // The run loop looks at `stop_after` after every instruction.
        self.code_modified = true;
        self.stop_after = true;
    }

    /// Tell the observer of an access this instruction made (after making it).
    pub(crate) fn report(&mut self, lin: u64, pa: u64, size: usize, kind: AccessKind, value: u64) {
        let access = Access {
            cpu: self.cpu.index,
            retired: self.retired(),
            pc: self.rip,
            vaddr: lin,
            paddr: pa,
            size: size as u8,
            kind,
            locked: self.locked,
            cpl: self.cpu.state.cpl(),
            value,
        };
        self.obs.access(&access);
    }

    /// A read of `size` (1, 2, 4 or 8) bytes at `lin` that needs nothing but a TLB hit and
    /// RAM, as nearly every one does: its value, or `None`, having done nothing, when it needs
    /// more (a page crossing, a TLB miss or a check the TLB cannot answer, a device), and
    /// then the caller does it with [`Exec::read`], which does the same steps
    /// and the rest. A handler whose common path is this calls nothing there, so saves no
    /// registers.
    ///
    /// An observer is told of the read as [`Exec::read`] tells it (after the access, with
    /// the same fields): a traced replay takes the quick path too.
    #[inline(always)]
    pub(crate) fn read_quick(&mut self, lin: u64, size: usize) -> Option<u64> {
        let pa = self.quick_target(lin, size, false)?;
        let v = ram_load(self.bus.ram(), pa, size)?;
        if O::ENABLED {
            self.report(lin, pa, size, AccessKind::Read, v);
        }
        Some(v)
    }

    /// A write that needs nothing but a TLB hit and RAM (see [`Exec::read_quick`]): `false`,
    /// having done nothing, when it needs more (also a page holding cached code), and then
    /// the caller does it with [`Exec::write`]. An observer is told of the write as
    /// [`Exec::write`] tells it.
    #[inline(always)]
    pub(crate) fn write_quick(&mut self, lin: u64, size: usize, value: u64) -> bool {
        let Some(pa) = self.write_quick_target(lin, size) else {
            return false;
        };
        if !ram_store(self.bus.ram(), pa, size, value) {
            return false;
        }
        if O::ENABLED {
            let v = value & crate::flags::mask(size);
            self.report(lin, pa, size, AccessKind::Write, v);
        }
        true
    }

    /// A read-modify-write of `size` bytes at `lin` that needs nothing but a TLB hit and RAM
    /// (see [`Exec::write_quick`]): the value there becomes `f` of it. `false`, having done
    /// nothing, when it needs more; the caller then does it with [`Exec::read_rmw`] and
    /// [`Exec::write_rmw`].
    #[inline(always)]
    pub(crate) fn modify_quick(
        &mut self,
        lin: u64,
        size: usize,
        f: impl FnOnce(u64) -> u64,
    ) -> bool {
        let Some(pa) = self.write_quick_target(lin, size) else {
            return false;
        };
        match ram_bytes(self.bus.ram(), pa, size) {
            Some(at) => {
                let v = f(load_bytes(at, size));
                store_bytes(at, size, v);
                if O::ENABLED {
                    // One read-modify-write access, as `write_rmw` reports it.
                    let v = v & crate::flags::mask(size);
                    self.report(lin, pa, size, AccessKind::ReadModifyWrite, v);
                }
                true
            }
            None => false,
        }
    }

    /// The physical address for a write of `size` bytes at `lin` when it needs nothing but a
    /// TLB hit and RAM: no observer, no page crossing, write permission and a dirty page in
    /// the TLB, no device, no cached code on the page (the TLB's store tags say all that).
    #[inline(always)]
    fn write_quick_target(&mut self, lin: u64, size: usize) -> Option<u64> {
        self.quick_target(lin, size, true)
    }

    /// The physical address of an access of `size` bytes at `lin` (a store when `write`)
    /// when the TLB's quick tags answer it alone ([`mmu::Tlb::quick`]): no page crossing,
    /// an entry that permits it at the current privilege level (for a store: a dirty page
    /// already reported written), a page of RAM no device claims. (The quick paths report
    /// to an observer themselves.)
    #[inline(always)]
    fn quick_target(&mut self, lin: u64, size: usize, write: bool) -> Option<u64> {
        let class = self.quick_class();
        self.cpu.tlb.quick(lin, size, class, write)
    }

    /// The TLB's quick-tag set for the current privilege level: 1 (the user set) at CPL 3,
    /// else 0. Tags exist only while paging is on, so in protected mode, where the CPL is
    /// CS's RPL (as `translate` takes it). Shared by the quick paths and native stretches.
    #[inline(always)]
    pub(crate) fn quick_class(&self) -> usize {
        let rpl = (self.cpu.state.seg[SegReg::Cs as usize].selector & 3) as usize;
        (rpl + 1) >> 2
    }

    /// Read `size` (1, 2, 4 or 8) bytes at a linear address.
    #[inline(always)]
    pub fn read(&mut self, lin: u64, size: usize) -> Result<u64, Exit> {
        self.read_as(lin, size, Intent::Read, AccessKind::Read)
    }

    /// Read for a read-modify-write: checks write permission first, reports nothing (the
    /// matching [`Exec::write_rmw`] reports one read-modify-write access).
    #[inline(always)]
    pub fn read_rmw(&mut self, lin: u64, size: usize) -> Result<u64, Exit> {
        self.read_as(lin, size, Intent::Write, AccessKind::ReadModifyWrite)
    }

    #[inline(always)]
    fn read_as(
        &mut self,
        lin: u64,
        size: usize,
        intent: Intent,
        kind: AccessKind,
    ) -> Result<u64, Exit> {
        if (lin & 0xfff) as usize + size <= 0x1000 {
            let pa = self.translate(lin, intent)?;
            let v = self.phys_read(pa, size);
            if O::ENABLED && kind == AccessKind::Read {
                self.report(lin, pa, size, kind, v);
            }
            Ok(v)
        } else {
            self.read_split(lin, size, intent, kind)
        }
    }

    /// [`Exec::read_as`] of an access that straddles a page boundary (rare: out of line).
    #[cold]
    #[inline(never)]
    fn read_split(
        &mut self,
        lin: u64,
        size: usize,
        intent: Intent,
        kind: AccessKind,
    ) -> Result<u64, Exit> {
        // Straddles a page: translate both halves before touching either.
        let first = 0x1000 - (lin & 0xfff) as usize;
        let pa0 = self.translate(lin, intent)?;
        let pa1 = self.translate(lin.wrapping_add(first as u64), intent)?;
        let lo = self.phys_read_bytes(pa0, first);
        let hi = self.phys_read_bytes(pa1, size - first);
        let v = lo | (hi << (first * 8));
        if O::ENABLED && kind == AccessKind::Read {
            self.report(lin, pa0, first, kind, lo);
            self.report(lin.wrapping_add(first as u64), pa1, size - first, kind, hi);
        }
        Ok(v)
    }

    fn phys_read_bytes(&mut self, pa: u64, n: usize) -> u64 {
        let mut v = 0u64;
        for k in 0..n {
            v |= self.phys_read(pa + k as u64, 1) << (k * 8);
        }
        v
    }

    /// Write `size` (1, 2, 4 or 8) bytes at a linear address.
    #[inline(always)]
    pub fn write(&mut self, lin: u64, size: usize, value: u64) -> Result<(), Exit> {
        self.write_as(lin, size, value, AccessKind::Write)
    }

    /// The write half of a read-modify-write started with [`Exec::read_rmw`].
    #[inline(always)]
    pub fn write_rmw(&mut self, lin: u64, size: usize, value: u64) -> Result<(), Exit> {
        self.write_as(lin, size, value, AccessKind::ReadModifyWrite)
    }

    #[inline(always)]
    fn write_as(
        &mut self,
        lin: u64,
        size: usize,
        value: u64,
        kind: AccessKind,
    ) -> Result<(), Exit> {
        if (lin & 0xfff) as usize + size <= 0x1000 {
            let pa = self.translate(lin, Intent::Write)?;
            self.phys_write(pa, size, value);
            if O::ENABLED {
                self.report(lin, pa, size, kind, value & crate::flags::mask(size));
            }
        } else {
            self.write_split(lin, size, value, kind)?;
        }
        Ok(())
    }

    /// [`Exec::write_as`] of an access that straddles a page boundary (rare: out of line).
    #[cold]
    #[inline(never)]
    fn write_split(
        &mut self,
        lin: u64,
        size: usize,
        value: u64,
        kind: AccessKind,
    ) -> Result<(), Exit> {
        let first = 0x1000 - (lin & 0xfff) as usize;
        let pa0 = self.translate(lin, Intent::Write)?;
        let pa1 = self.translate(lin.wrapping_add(first as u64), Intent::Write)?;
        for k in 0..size {
            let pa = if k < first {
                pa0 + k as u64
            } else {
                pa1 + (k - first) as u64
            };
            self.phys_write(pa, 1, value >> (k * 8));
        }
        if O::ENABLED {
            let lo = value & crate::flags::mask(first);
            let hi = (value >> (first * 8)) & crate::flags::mask(size - first);
            self.report(lin, pa0, first, kind, lo);
            self.report(lin.wrapping_add(first as u64), pa1, size - first, kind, hi);
        }
        Ok(())
    }

    /// Check that `size` bytes at `lin` are accessible, faulting as the hardware does: on the
    /// first page, else at the first byte of the second page (that is what CR2 reports).
    pub fn check_span(&mut self, lin: u64, size: usize, intent: Intent) -> Result<(), Exit> {
        self.translate(lin, intent)?;
        let last = lin.wrapping_add(size as u64 - 1);
        if last >> 12 != lin >> 12 {
            self.translate(last & !0xfff, intent)?;
        }
        Ok(())
    }

    /// Read 16 bytes at a linear address (SSE loads, CMPXCHG16B).
    pub fn read_u128(&mut self, lin: u64) -> Result<u128, Exit> {
        if lin & 0xfff <= 0x1000 - 16 {
            // Within one page (every aligned operand): one translation serves both halves,
            // with the same fault, accesses and reports as the two reads below.
            let pa = self.translate(lin, Intent::Read)?;
            let lo = self.phys_read(pa, 8);
            if O::ENABLED {
                self.report(lin, pa, 8, AccessKind::Read, lo);
            }
            let hi = self.phys_read(pa + 8, 8);
            if O::ENABLED {
                self.report(lin.wrapping_add(8), pa + 8, 8, AccessKind::Read, hi);
            }
            return Ok(lo as u128 | (hi as u128) << 64);
        }
        // Check both halves are readable before either read, so a fault leaves no trace.
        self.check_span(lin, 16, Intent::Read)?;
        let lo = self.read(lin, 8)?;
        let hi = self.read(lin.wrapping_add(8), 8)?;
        Ok(lo as u128 | (hi as u128) << 64)
    }

    /// Write 16 bytes at a linear address.
    pub fn write_u128(&mut self, lin: u64, value: u128) -> Result<(), Exit> {
        if lin & 0xfff <= 0x1000 - 16 {
            // Within one page: one translation for both halves (see `read_u128`).
            let pa = self.translate(lin, Intent::Write)?;
            let (lo, hi) = (value as u64, (value >> 64) as u64);
            self.phys_write(pa, 8, lo);
            if O::ENABLED {
                self.report(lin, pa, 8, AccessKind::Write, lo);
            }
            self.phys_write(pa + 8, 8, hi);
            if O::ENABLED {
                self.report(lin.wrapping_add(8), pa + 8, 8, AccessKind::Write, hi);
            }
            return Ok(());
        }
        self.check_span(lin, 16, Intent::Write)?;
        self.write(lin, 8, value as u64)?;
        self.write(lin.wrapping_add(8), 8, (value >> 64) as u64)
    }
}

#[cfg(test)]
mod tests {
    use crate::exec::RunExit;
    use crate::observer::{Access, AccessKind};
    use crate::testing::{RecordingObserver, TestMachine, STACK_TOP};
    use iced_x86::code_asm::*;

    /// Under an observer the fast handlers' accesses go the full way the first time a page
    /// is seen (a TLB miss; a first store) and the quick way after (the TLB's quick tags):
    /// either way each is reported once, after it is made, with its address, size, kind
    /// and value, at its instruction's count — as a hand model of the program says.
    #[test]
    fn quick_and_full_accesses_report_alike() {
        let mut m = TestMachine::assemble(|a| {
            a.mov(rsi, 0x20_0000u64)?; // 0
            a.mov(rax, qword_ptr(rsi))?; // 1: read, TLB miss (full)
            a.mov(rax, qword_ptr(rsi + 8))?; // 2: read (quick)
            a.mov(qword_ptr(rsi + 16), rax)?; // 3: first store to the page (full)
            a.mov(qword_ptr(rsi + 24), rax)?; // 4: store (quick)
            a.add(qword_ptr(rsi + 32), rax)?; // 5: read-modify-write (quick)
            a.movzx(ecx, byte_ptr(rsi + 40))?; // 6: one-byte read (quick)
            a.mov(dword_ptr(rsi + 44), 0x1234_5678)?; // 7: store of an immediate (quick)
            a.push(rax)?; // 8: stack store
            a.push(rcx)?; // 9: stack store
            a.pop(rdx)?; // 10: stack read
            a.cmp(qword_ptr(rsi + 8), rax)?; // 11: read (quick), alone
            a.hlt()
        });
        let words: [u64; 6] = [
            0x1111_2222_3333_4444,
            0x0102_0304_0506_0708,
            0,
            0,
            0x10,
            0xab,
        ];
        for (k, w) in words.iter().enumerate() {
            m.bus.ram[0x20_0000 + 8 * k..0x20_0008 + 8 * k].copy_from_slice(&w.to_le_bytes());
        }
        let mut obs = RecordingObserver::default();
        let exit = loop {
            match m.cpu.run(&mut m.bus, &mut obs, &mut m.code, 1000) {
                RunExit::Budget => {}
                exit => break exit,
            }
        };
        assert_eq!(exit, RunExit::Halted);
        let (r, w, rmw) = (
            AccessKind::Read,
            AccessKind::Write,
            AccessKind::ReadModifyWrite,
        );
        let loaded = words[1];
        let want: Vec<(u64, AccessKind, u64, u8, u64)> = vec![
            (1, r, 0x20_0000, 8, words[0]),
            (2, r, 0x20_0008, 8, loaded),
            (3, w, 0x20_0010, 8, loaded),
            (4, w, 0x20_0018, 8, loaded),
            (5, rmw, 0x20_0020, 8, words[4].wrapping_add(loaded)),
            (6, r, 0x20_0028, 1, 0xab),
            (7, w, 0x20_002c, 4, 0x1234_5678),
            (8, w, STACK_TOP - 8, 8, loaded),
            (9, w, STACK_TOP - 16, 8, 0xab),
            (10, r, STACK_TOP - 16, 8, 0xab),
            (11, r, 0x20_0008, 8, loaded),
        ];
        let got: Vec<(u64, AccessKind, u64, u8, u64)> = obs
            .accesses
            .iter()
            .map(|a: &Access| {
                assert_eq!(a.vaddr, a.paddr, "identity mapping");
                assert!(a.cpl == 0 && !a.locked && a.cpu == 0);
                (a.retired, a.kind, a.paddr, a.size, a.value)
            })
            .collect();
        assert_eq!(got, want);
        // Each access names its own instruction: addresses go up with the count.
        assert!(obs.accesses.windows(2).all(|p| p[0].pc < p[1].pc));
    }
}
