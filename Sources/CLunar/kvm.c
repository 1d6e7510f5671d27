// Thin KVM ioctl wrappers: one call each, errors as -errno. The VMM's logic is in Swift.
#include "CLunar.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

static int result(int r) { return r < 0 ? -errno : r; }

int lunar_kvm_ioctl_value(int fd, unsigned long request, unsigned long value) { return result(ioctl(fd, request, value)); }
int lunar_kvm_get_api_version(int kvm) { return result(ioctl(kvm, KVM_GET_API_VERSION, 0)); }
int lunar_kvm_create_vm(int kvm) { return result(ioctl(kvm, KVM_CREATE_VM, 0)); }
int lunar_kvm_vcpu_mmap_size(int kvm) { return result(ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)); }
int lunar_kvm_check_extension(int fd, int extension) { return result(ioctl(fd, KVM_CHECK_EXTENSION, extension)); }
int lunar_kvm_set_tss_addr(int vm, uint64_t address) { return result(ioctl(vm, KVM_SET_TSS_ADDR, (unsigned long)address)); }
int lunar_kvm_create_irqchip(int vm) { return result(ioctl(vm, KVM_CREATE_IRQCHIP, 0)); }

int lunar_kvm_create_pit2(int vm) {
    struct kvm_pit_config config;
    memset(&config, 0, sizeof config);
    return result(ioctl(vm, KVM_CREATE_PIT2, &config));
}

int lunar_kvm_set_user_memory_region(int vm, uint32_t slot, uint64_t guest_address, uint64_t size, void *host) {
    struct kvm_userspace_memory_region region = {
        .slot = slot, .flags = 0, .guest_phys_addr = guest_address, .memory_size = size,
        .userspace_addr = (uint64_t)(uintptr_t)host,
    };
    return result(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region));
}

int lunar_kvm_create_vcpu(int vm, int id) { return result(ioctl(vm, KVM_CREATE_VCPU, id)); }

int lunar_kvm_get_supported_cpuid(int kvm, struct kvm_cpuid_entry2 *entries, uint32_t *count) {
    struct kvm_cpuid2 *c = calloc(1, sizeof *c + *count * sizeof *entries);
    if (!c) return -ENOMEM;
    c->nent = *count;
    int r = result(ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c));
    if (r >= 0) {
        memcpy(entries, c->entries, c->nent * sizeof *entries);
        *count = c->nent;
    }
    free(c);
    return r;
}

int lunar_kvm_set_cpuid2(int vcpu, const struct kvm_cpuid_entry2 *entries, uint32_t count) {
    struct kvm_cpuid2 *c = calloc(1, sizeof *c + count * sizeof *entries);
    if (!c) return -ENOMEM;
    c->nent = count;
    memcpy(c->entries, entries, count * sizeof *entries);
    int r = result(ioctl(vcpu, KVM_SET_CPUID2, c));
    free(c);
    return r;
}

int lunar_kvm_get_sregs(int vcpu, struct kvm_sregs *sregs) { return result(ioctl(vcpu, KVM_GET_SREGS, sregs)); }
int lunar_kvm_set_sregs(int vcpu, const struct kvm_sregs *sregs) { return result(ioctl(vcpu, KVM_SET_SREGS, sregs)); }
int lunar_kvm_set_regs(int vcpu, const struct kvm_regs *regs) { return result(ioctl(vcpu, KVM_SET_REGS, regs)); }
int lunar_kvm_run(int vcpu) { return result(ioctl(vcpu, KVM_RUN, 0)); }

int lunar_kvm_get_mp_state(int vcpu, uint32_t *state) {
    struct kvm_mp_state mp = { 0 };
    int r = result(ioctl(vcpu, KVM_GET_MP_STATE, &mp));
    if (r >= 0) *state = mp.mp_state;
    return r;
}

int lunar_kvm_set_mp_state(int vcpu, uint32_t state) {
    struct kvm_mp_state mp = { .mp_state = state };
    return result(ioctl(vcpu, KVM_SET_MP_STATE, &mp));
}

int lunar_kvm_irq_line(int vm, uint32_t irq, uint32_t level) {
    struct kvm_irq_level line = { .irq = irq, .level = level };
    return result(ioctl(vm, KVM_IRQ_LINE, &line));
}

uint32_t lunar_kvm_run_exit_reason(const struct kvm_run *run) { return run->exit_reason; }
void lunar_kvm_run_set_immediate_exit(struct kvm_run *run, uint8_t value) { __atomic_store_n(&run->immediate_exit, value, __ATOMIC_SEQ_CST); }

void lunar_kvm_run_io(const struct kvm_run *run, uint8_t *direction, uint8_t *size, uint16_t *port,
                      uint32_t *count, uint64_t *data_offset) {
    *direction = run->io.direction;
    *size = run->io.size;
    *port = run->io.port;
    *count = run->io.count;
    *data_offset = run->io.data_offset;
}

uint32_t lunar_kvm_run_internal_suberror(const struct kvm_run *run) { return run->internal.suberror; }
uint64_t lunar_kvm_run_fail_entry_reason(const struct kvm_run *run) { return run->fail_entry.hardware_entry_failure_reason; }

void lunar_kvm_run_mmio(struct kvm_run *run, uint64_t *address, uint8_t **data, uint32_t *length, uint8_t *is_write) {
    *address = run->mmio.phys_addr;
    *data = run->mmio.data;
    *length = run->mmio.len;
    *is_write = run->mmio.is_write;
}

int lunar_kvm_ioeventfd(int vm, uint64_t address, uint32_t length, int fd, int match_zero, int deassign) {
    struct kvm_ioeventfd e;
    memset(&e, 0, sizeof e);
    e.addr = address;
    e.len = length;
    e.fd = fd;
    e.datamatch = 0;
    e.flags = (match_zero ? KVM_IOEVENTFD_FLAG_DATAMATCH : 0) | (deassign ? KVM_IOEVENTFD_FLAG_DEASSIGN : 0);
    return result(ioctl(vm, KVM_IOEVENTFD, &e));
}

int lunar_kvm_irqfd(int vm, int fd, uint32_t gsi, int deassign) {
    struct kvm_irqfd f;
    memset(&f, 0, sizeof f);
    f.fd = (uint32_t)fd;
    f.gsi = gsi;
    f.flags = deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0;
    return result(ioctl(vm, KVM_IRQFD, &f));
}
