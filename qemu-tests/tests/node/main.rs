//! Single-node QEMU tests, in one binary so that two of them run at once (two one-vCPU VMs
//! on the two cores, [`cairn_qemu_tests::vm_slots`]) and the longest starts first: libtest
//! runs tests in name order, and `ab` (A/B updates, about eight boots) sorts first.

mod ab;
mod boot;
mod firstboot;
mod keys;
mod live;
