/*
 * io.c - how the core reads a descriptor: the one pread loop (every pread of
 * the core, and the fallback of the batch's gathered preadv), and which
 * backend the storage under a descriptor calls for.
 */
#include "internal.h"

#include <errno.h>
#include <unistd.h>

#ifdef __linux__
#include <sys/vfs.h>
#endif

/* MARK: - The pread loop */

int stc__pread_full(int fd, void *dst, size_t len, uint64_t offset, size_t *got) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)dst + done, len - done, (off_t)(offset + done));
        if (n < 0) {
            /* A signal before any byte moved: the read is simply retried. */
            if (errno == EINTR) continue;
            *got = done;
            return errno;
        }
        if (n == 0) break; /* end of file: the caller judges the short count */
        done += (size_t)n;
    }
    *got = done;
    return 0;
}

/* MARK: - The backend the storage calls for */

/* f_type values of file systems where a mapping's page faults each wait on
 * the network or a user-space daemon: small synchronous reads that load
 * 10-50x slower than large preads. Values from linux/magic.h where it has
 * them; the others are the ones these file systems' clients register. */
static const uint32_t remote_filesystems[] = {
    0x00006969u, /* NFS */
    0x0000517Bu, /* SMB (the old smbfs) */
    0xFF534D42u, /* CIFS */
    0xFE534D42u, /* SMB2/3 */
    0x65735546u, /* FUSE: sshfs, s3fs, gcsfuse, rclone, virtiofs, ... */
    0x01021997u, /* 9p (v9fs: WSL2, QEMU shares) */
    0x00C36400u, /* Ceph */
    0x0BD00BD0u, /* Lustre */
    0x47504653u, /* GPFS (IBM Storage Scale) */
    0x19830326u, /* BeeGFS */
    0x20030528u, /* OrangeFS (PVFS2) */
    0xAAD7AAEAu, /* PanFS */
    0x5346414Fu, /* AFS */
    0x6B414653u, /* kAFS */
    0x73757245u, /* Coda */
    0x0000564Cu, /* NCP */
};

stc_backend stc_backend_for_filesystem(uint64_t fs_type) {
    /* f_type is a signed word: a 32-bit long holds CIFS's magic as a negative
     * number, which reaches here sign-extended. The magics are 32 bits. */
    uint32_t magic = (uint32_t)fs_type;
    for (size_t i = 0; i < sizeof remote_filesystems / sizeof remote_filesystems[0]; i++)
        if (magic == remote_filesystems[i]) return STC_BACKEND_PREAD;
    return STC_BACKEND_MMAP;
}

stc_backend stc__backend_of_fd(int fd) {
#ifdef __linux__
    struct statfs sfs;
    if (fstatfs(fd, &sfs) == 0) return stc_backend_for_filesystem((uint64_t)sfs.f_type);
#else
    (void)fd;
#endif
    return STC_BACKEND_MMAP;
}
