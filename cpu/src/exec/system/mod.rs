//! Privileged and system instructions: segment loads and descriptor tables, far transfers
//! and IRET, control and debug registers, MSRs, SYSCALL/SYSRET/SWAPGS, TLB and cache
//! control, and the x87 control subset.
//!
//! Every instruction of this group ends its decoded block (see `fetch_block`), so a change of
//! mode, CS or paging takes effect at the next instruction.

use iced_x86::{Code, Instruction, Mnemonic};

use crate::bus::Bus;
use crate::exec::Exec;
use crate::fault::ExecResult;
use crate::observer::Observer;

pub(crate) mod control_regs;
pub(crate) mod descriptor;
mod far;
pub(crate) mod msr;
mod segments;
mod syscall;
mod tables;
mod x87;

#[cfg(test)]
mod tests;

/// Whether this module executes `code`.
pub(crate) fn claims(code: Code) -> bool {
    use Code as C;
    if x87::claims(code) {
        return true;
    }
    matches!(
        code,
        // Segment registers.
        C::Mov_rm16_Sreg
            | C::Mov_r32m16_Sreg
            | C::Mov_r64m16_Sreg
            | C::Mov_Sreg_rm16
            | C::Mov_Sreg_r32m16
            | C::Mov_Sreg_r64m16
            | C::Popw_ES
            | C::Popd_ES
            | C::Popw_SS
            | C::Popd_SS
            | C::Popw_DS
            | C::Popd_DS
            | C::Popw_FS
            | C::Popd_FS
            | C::Popq_FS
            | C::Popw_GS
            | C::Popd_GS
            | C::Popq_GS
            | C::Les_r16_m1616
            | C::Les_r32_m1632
            | C::Lds_r16_m1616
            | C::Lds_r32_m1632
            | C::Lss_r16_m1616
            | C::Lss_r32_m1632
            | C::Lss_r64_m1664
            | C::Lfs_r16_m1616
            | C::Lfs_r32_m1632
            | C::Lfs_r64_m1664
            | C::Lgs_r16_m1616
            | C::Lgs_r32_m1632
            | C::Lgs_r64_m1664
            | C::Lar_r16_rm16
            | C::Lar_r32_r32m16
            | C::Lar_r64_r64m16
            | C::Lsl_r16_rm16
            | C::Lsl_r32_r32m16
            | C::Lsl_r64_r64m16
            | C::Verr_rm16
            | C::Verr_r32m16
            | C::Verr_r64m16
            | C::Verw_rm16
            | C::Verw_r32m16
            | C::Verw_r64m16
            | C::Arpl_rm16_r16
            | C::Arpl_r32m16_r32
            // Descriptor tables and the task register.
            | C::Lgdt_m1632_16
            | C::Lgdt_m1632
            | C::Lgdt_m1664
            | C::Lidt_m1632_16
            | C::Lidt_m1632
            | C::Lidt_m1664
            | C::Sgdt_m1632_16
            | C::Sgdt_m1632
            | C::Sgdt_m1664
            | C::Sidt_m1632_16
            | C::Sidt_m1632
            | C::Sidt_m1664
            | C::Lldt_rm16
            | C::Lldt_r32m16
            | C::Lldt_r64m16
            | C::Sldt_rm16
            | C::Sldt_r32m16
            | C::Sldt_r64m16
            | C::Ltr_rm16
            | C::Ltr_r32m16
            | C::Ltr_r64m16
            | C::Str_rm16
            | C::Str_r32m16
            | C::Str_r64m16
            // Far transfers.
            | C::Jmp_ptr1616
            | C::Jmp_ptr1632
            | C::Jmp_m1616
            | C::Jmp_m1632
            | C::Jmp_m1664
            | C::Call_ptr1616
            | C::Call_ptr1632
            | C::Call_m1616
            | C::Call_m1632
            | C::Call_m1664
            | C::Retfw
            | C::Retfd
            | C::Retfq
            | C::Retfw_imm16
            | C::Retfd_imm16
            | C::Retfq_imm16
            | C::Iretw
            | C::Iretd
            | C::Iretq
            // Control and debug registers, TLB and caches.
            | C::Mov_r32_cr
            | C::Mov_r64_cr
            | C::Mov_cr_r32
            | C::Mov_cr_r64
            | C::Mov_r32_dr
            | C::Mov_r64_dr
            | C::Mov_dr_r32
            | C::Mov_dr_r64
            | C::Clts
            | C::Lmsw_rm16
            | C::Lmsw_r32m16
            | C::Lmsw_r64m16
            | C::Smsw_rm16
            | C::Smsw_r32m16
            | C::Smsw_r64m16
            | C::Invlpg_m
            | C::Wbinvd
            | C::Invd
            | C::Xgetbv
            | C::Xsetbv
            | C::Xsave_mem
            | C::Xsave64_mem
            | C::Xrstor_mem
            | C::Xrstor64_mem
            | C::Xsaveopt_mem
            | C::Xsaveopt64_mem
            | C::Xsavec_mem
            | C::Xsavec64_mem
            | C::Xsaves_mem
            | C::Xsaves64_mem
            | C::Xrstors_mem
            | C::Xrstors64_mem
            // MSRs and fast system calls.
            | C::Rdmsr
            | C::Wrmsr
            | C::Syscall
            | C::Sysretd
            | C::Sysretq
            | C::Swapgs
    )
}

/// Execute one instruction this module claims.
pub(crate) fn exec<B: Bus, O: Observer>(x: &mut Exec<B, O>, i: &Instruction) -> ExecResult {
    use Mnemonic as M;
    let code = i.code();
    if x87::claims(code) {
        return x87::exec(x, i);
    }
    match i.mnemonic() {
        M::Mov => match code {
            Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16 | Code::Mov_Sreg_r64m16 => {
                segments::mov_to_sreg(x, i)
            }
            Code::Mov_rm16_Sreg | Code::Mov_r32m16_Sreg | Code::Mov_r64m16_Sreg => {
                segments::mov_from_sreg(x, i)
            }
            Code::Mov_r32_cr | Code::Mov_r64_cr => control_regs::mov_from_cr(x, i),
            Code::Mov_cr_r32 | Code::Mov_cr_r64 => control_regs::mov_to_cr(x, i),
            _ => control_regs::mov_dr(x, i),
        },
        M::Pop => segments::pop_sreg(x, i),
        M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => segments::load_far_pointer(x, i),
        M::Lar | M::Lsl => segments::lar_lsl(x, i),
        M::Verr | M::Verw => segments::verr_verw(x, i),
        M::Arpl => segments::arpl(x, i),
        M::Lgdt | M::Lidt => tables::load_table(x, i),
        M::Sgdt | M::Sidt => tables::store_table(x, i),
        M::Lldt => tables::lldt(x, i),
        M::Ltr => tables::ltr(x, i),
        M::Sldt | M::Str => tables::store_selector(x, i),
        M::Jmp => far::far_jmp(x, i),
        M::Call => far::far_call(x, i),
        M::Retf => far::retf(x, i),
        M::Iret | M::Iretd | M::Iretq => far::iret(x, i),
        M::Clts => control_regs::clts(x),
        M::Lmsw => control_regs::lmsw(x, i),
        M::Smsw => control_regs::smsw(x, i),
        M::Invlpg => control_regs::invlpg(x, i),
        M::Wbinvd | M::Invd => control_regs::cache_flush(x),
        M::Rdmsr => msr::rdmsr(x),
        M::Wrmsr => msr::wrmsr(x),
        M::Syscall => syscall::syscall(x),
        M::Sysret | M::Sysretq => syscall::sysret(x, i),
        M::Swapgs => syscall::swapgs(x),
        M::Xgetbv
        | M::Xsetbv
        | M::Xsave
        | M::Xsave64
        | M::Xrstor
        | M::Xrstor64
        | M::Xsaveopt
        | M::Xsaveopt64
        | M::Xsavec
        | M::Xsavec64
        | M::Xsaves
        | M::Xsaves64
        | M::Xrstors
        | M::Xrstors64 => control_regs::xsave_family(x, i),
        _ => Err(crate::exec::unimplemented(x, i)),
    }
}
