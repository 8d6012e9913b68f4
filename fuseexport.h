/* fuseexport.h - the part of the kernel's FUSE ABI that fuseexport speaks
 *
 * Follows include/uapi/linux/fuse.h (protocol 7.45), carried here so that the
 * build needs no kernel headers (musl-gcc -static sees none) and so that the
 * newer parts (passthrough, io_uring) are there on older distributions.
 * Every struct size is pinned below; the kernel's layout never changes.
 * It also carries the NBD protocol's constants and messages (the NBD
 * project's doc/proto.md), for the NBD source.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef FUSEEXPORT_H
#define FUSEEXPORT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <sys/ioctl.h>

#define FUSE_KERNEL_VERSION 7
#define FUSE_KERNEL_MINOR_VERSION 45	/* the newest protocol we speak */
#define FUSE_OLDEST_MINOR 9		/* fuse_attr with blksize, 7.9 */
#define FUSE_ROOT_ID 1
#define FUSE_MIN_READ_BUFFER 8192

enum fuse_opcode {
	FUSE_LOOKUP = 1,
	FUSE_FORGET = 2,		/* no reply */
	FUSE_GETATTR = 3,
	FUSE_SETATTR = 4,
	FUSE_READLINK = 5,
	FUSE_SYMLINK = 6,
	FUSE_MKNOD = 8,
	FUSE_MKDIR = 9,
	FUSE_UNLINK = 10,
	FUSE_RMDIR = 11,
	FUSE_RENAME = 12,
	FUSE_LINK = 13,
	FUSE_OPEN = 14,
	FUSE_READ = 15,
	FUSE_WRITE = 16,
	FUSE_STATFS = 17,
	FUSE_RELEASE = 18,
	FUSE_FSYNC = 20,
	FUSE_SETXATTR = 21,
	FUSE_GETXATTR = 22,
	FUSE_LISTXATTR = 23,
	FUSE_REMOVEXATTR = 24,
	FUSE_FLUSH = 25,
	FUSE_INIT = 26,
	FUSE_OPENDIR = 27,
	FUSE_READDIR = 28,
	FUSE_RELEASEDIR = 29,
	FUSE_FSYNCDIR = 30,
	FUSE_GETLK = 31,
	FUSE_SETLK = 32,
	FUSE_SETLKW = 33,
	FUSE_ACCESS = 34,
	FUSE_CREATE = 35,
	FUSE_INTERRUPT = 36,		/* no reply */
	FUSE_BMAP = 37,
	FUSE_DESTROY = 38,
	FUSE_IOCTL = 39,
	FUSE_POLL = 40,
	FUSE_NOTIFY_REPLY = 41,
	FUSE_BATCH_FORGET = 42,		/* no reply */
	FUSE_FALLOCATE = 43,
	FUSE_READDIRPLUS = 44,
	FUSE_RENAME2 = 45,
	FUSE_LSEEK = 46,
	FUSE_COPY_FILE_RANGE = 47,
	FUSE_SETUPMAPPING = 48,
	FUSE_REMOVEMAPPING = 49,
	FUSE_SYNCFS = 50,
	FUSE_TMPFILE = 51,
	FUSE_STATX = 52,
	FUSE_COPY_FILE_RANGE_64 = 53,
	FUSE_OPCODE_END			/* one past the last we name */
};

/* INIT flags; bits 32 and up travel in flags2 (FUSE_INIT_EXT) */
#define FUSE_ASYNC_READ		(1ULL << 0)
#define FUSE_ATOMIC_O_TRUNC	(1ULL << 3)
#define FUSE_BIG_WRITES		(1ULL << 5)
#define FUSE_ASYNC_DIO		(1ULL << 15)
#define FUSE_WRITEBACK_CACHE	(1ULL << 16)
#define FUSE_PARALLEL_DIROPS	(1ULL << 18)
#define FUSE_MAX_PAGES		(1ULL << 22)
#define FUSE_HANDLE_KILLPRIV_V2	(1ULL << 28)
#define FUSE_INIT_EXT		(1ULL << 30)
#define FUSE_DIRECT_IO_ALLOW_MMAP (1ULL << 36)
#define FUSE_PASSTHROUGH	(1ULL << 37)
#define FUSE_OVER_IO_URING	(1ULL << 41)

/* Notifications: the server's own writes to /dev/fuse, unique 0, the
 * code in the out_header's error field */
#define FUSE_NOTIFY_INVAL_INODE	2
#define FUSE_NOTIFY_STORE	4

/* OPEN reply flags */
#define FOPEN_DIRECT_IO		(1U << 0)
#define FOPEN_KEEP_CACHE	(1U << 1)
#define FOPEN_PARALLEL_DIRECT_WRITES (1U << 6)
#define FOPEN_PASSTHROUGH	(1U << 7)

/* SETATTR valid bits */
#define FATTR_MODE		(1U << 0)
#define FATTR_UID		(1U << 1)
#define FATTR_GID		(1U << 2)
#define FATTR_SIZE		(1U << 3)
#define FATTR_ATIME		(1U << 4)
#define FATTR_MTIME		(1U << 5)
#define FATTR_FH		(1U << 6)
#define FATTR_ATIME_NOW		(1U << 7)
#define FATTR_MTIME_NOW		(1U << 8)
#define FATTR_LOCKOWNER		(1U << 9)
#define FATTR_CTIME		(1U << 10)
#define FATTR_KILL_SUIDGID	(1U << 11)

#define FUSE_FSYNC_FDATASYNC	(1U << 0)
#define FUSE_WRITE_CACHE	(1U << 0)	/* WRITE: from the writeback cache */

/* Block device ioctls and fallocate modes, which musl's headers lack */
#ifndef BLKROGET
#define BLKROGET		_IO(0x12, 94)
#endif
#ifndef BLKSSZGET
#define BLKSSZGET		_IO(0x12, 104)
#endif
#ifndef BLKGETSIZE64
#define BLKGETSIZE64		_IOR(0x12, 114, size_t)
#endif
#ifndef BLKZEROOUT
#define BLKZEROOUT		_IO(0x12, 127)
#endif
#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER	57
#endif
#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE	0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE	0x02
#endif
#ifndef FALLOC_FL_ZERO_RANGE
#define FALLOC_FL_ZERO_RANGE	0x10
#endif

/* /dev/fuse ioctls */
#define FUSE_DEV_IOC_MAGIC	229
#define FUSE_DEV_IOC_CLONE	_IOR(FUSE_DEV_IOC_MAGIC, 0, uint32_t)
struct fuse_backing_map {
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};
#define FUSE_DEV_IOC_BACKING_OPEN _IOW(FUSE_DEV_IOC_MAGIC, 1, struct fuse_backing_map)
#define FUSE_DEV_IOC_BACKING_CLOSE _IOW(FUSE_DEV_IOC_MAGIC, 2, uint32_t)

struct fuse_in_header {
	uint32_t len;
	uint32_t opcode;
	uint64_t unique;
	uint64_t nodeid;
	uint32_t uid;
	uint32_t gid;
	uint32_t pid;
	uint16_t total_extlen;	/* in 8-byte units */
	uint16_t padding;
};

struct fuse_out_header {
	uint32_t len;
	int32_t error;
	uint64_t unique;
};

struct fuse_init_in {
	uint32_t major;
	uint32_t minor;
	uint32_t max_readahead;
	uint32_t flags;
	uint32_t flags2;	/* 7.36 */
	uint32_t unused[11];
};
#define FUSE_COMPAT_INIT_IN_SIZE 16

struct fuse_init_out {
	uint32_t major;
	uint32_t minor;
	uint32_t max_readahead;
	uint32_t flags;
	uint16_t max_background;
	uint16_t congestion_threshold;
	uint32_t max_write;
	uint32_t time_gran;	/* 7.23 */
	uint16_t max_pages;
	uint16_t map_alignment;
	uint32_t flags2;
	uint32_t max_stack_depth;	/* 7.40 */
	uint16_t request_timeout;	/* 7.43 */
	uint16_t unused[11];
};
#define FUSE_COMPAT_22_INIT_OUT_SIZE 24

struct fuse_attr {
	uint64_t ino;
	uint64_t size;
	uint64_t blocks;
	uint64_t atime;
	uint64_t mtime;
	uint64_t ctime;
	uint32_t atimensec;
	uint32_t mtimensec;
	uint32_t ctimensec;
	uint32_t mode;
	uint32_t nlink;
	uint32_t uid;
	uint32_t gid;
	uint32_t rdev;
	uint32_t blksize;
	uint32_t flags;
};

struct fuse_attr_out {
	uint64_t attr_valid;
	uint32_t attr_valid_nsec;
	uint32_t dummy;
	struct fuse_attr attr;
};

struct fuse_getattr_in {
	uint32_t getattr_flags;
	uint32_t dummy;
	uint64_t fh;
};

struct fuse_setattr_in {
	uint32_t valid;
	uint32_t padding;
	uint64_t fh;
	uint64_t size;
	uint64_t lock_owner;
	uint64_t atime;
	uint64_t mtime;
	uint64_t ctime;
	uint32_t atimensec;
	uint32_t mtimensec;
	uint32_t ctimensec;
	uint32_t mode;
	uint32_t unused4;
	uint32_t uid;
	uint32_t gid;
	uint32_t unused5;
};

struct fuse_open_in {
	uint32_t flags;
	uint32_t open_flags;
};

struct fuse_open_out {
	uint64_t fh;
	uint32_t open_flags;
	int32_t backing_id;	/* 7.40, with FOPEN_PASSTHROUGH */
};

struct fuse_release_in {
	uint64_t fh;
	uint32_t flags;
	uint32_t release_flags;
	uint64_t lock_owner;
};

struct fuse_flush_in {
	uint64_t fh;
	uint32_t unused;
	uint32_t padding;
	uint64_t lock_owner;
};

struct fuse_read_in {
	uint64_t fh;
	uint64_t offset;
	uint32_t size;
	uint32_t read_flags;
	uint64_t lock_owner;
	uint32_t flags;
	uint32_t padding;
};

struct fuse_write_in {
	uint64_t fh;
	uint64_t offset;
	uint32_t size;
	uint32_t write_flags;
	uint64_t lock_owner;
	uint32_t flags;
	uint32_t padding;
};

struct fuse_write_out {
	uint32_t size;
	uint32_t padding;
};

struct fuse_fsync_in {
	uint64_t fh;
	uint32_t fsync_flags;
	uint32_t padding;
};

struct fuse_fallocate_in {
	uint64_t fh;
	uint64_t offset;
	uint64_t length;
	uint32_t mode;
	uint32_t padding;
};

struct fuse_lseek_in {
	uint64_t fh;
	uint64_t offset;
	uint32_t whence;
	uint32_t padding;
};

struct fuse_lseek_out {
	uint64_t offset;
};

struct fuse_notify_inval_inode_out {
	uint64_t ino;
	int64_t off;
	int64_t len;
};

struct fuse_notify_store_out {
	uint64_t nodeid;
	uint64_t offset;
	uint32_t size;
	uint32_t padding;
};

struct fuse_kstatfs {
	uint64_t blocks;
	uint64_t bfree;
	uint64_t bavail;
	uint64_t files;
	uint64_t ffree;
	uint32_t bsize;
	uint32_t namelen;
	uint32_t frsize;
	uint32_t padding;
	uint32_t spare[6];
};

struct fuse_statfs_out {
	struct fuse_kstatfs st;
};

struct fuse_interrupt_in {
	uint64_t unique;
};

struct fuse_forget_in {
	uint64_t nlookup;
};

struct fuse_batch_forget_in {
	uint32_t count;
	uint32_t dummy;
};

/*
 * FUSE over io_uring (7.42): the kernel hands requests to entries that the
 * server registered on per-CPU queues, through IORING_OP_URING_CMD on a
 * ring with 128-byte SQEs, and takes each reply with the fetch of the next.
 */
#define FUSE_IO_URING_CMD_REGISTER	1
#define FUSE_IO_URING_CMD_COMMIT_AND_FETCH 2

struct fuse_uring_cmd_req {		/* in the SQE's command area */
	uint64_t flags;
	uint64_t commit_id;		/* the unique of the request answered */
	uint16_t qid;
	uint8_t padding[6];
};

struct fuse_uring_ent_in_out {
	uint64_t flags;
	uint64_t commit_id;
	uint32_t payload_sz;		/* bytes used in the payload buffer */
	uint32_t padding;
	uint64_t reserved;
};

struct fuse_uring_req_header {		/* an entry's header buffer */
	char in_out[128];		/* fuse_in_header, or fuse_out_header */
	char op_in[128];		/* the opcode's own struct */
	struct fuse_uring_ent_in_out ring_ent_in_out;
};

/* The io_uring ABI (include/uapi/linux/io_uring.h), as far as used here */
#define IORING_SETUP_SQE128	(1U << 10)
#define IORING_FEAT_SINGLE_MMAP	(1U << 0)
#define IORING_ENTER_GETEVENTS	(1U << 0)
#define IORING_OP_URING_CMD	46
#define IORING_OFF_SQ_RING	0ULL
#define IORING_OFF_CQ_RING	0x8000000ULL
#define IORING_OFF_SQES		0x10000000ULL

struct io_sqring_offsets {
	uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1;
	uint64_t resv2;
};

struct io_cqring_offsets {
	uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1;
	uint64_t resv2;
};

struct io_uring_params {
	uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle;
	uint32_t features, wq_fd, resv[3];
	struct io_sqring_offsets sq_off;
	struct io_cqring_offsets cq_off;
};

struct io_uring_sqe128 {		/* an SQE of a ring set up with SQE128 */
	uint8_t opcode;
	uint8_t flags;
	uint16_t ioprio;
	int32_t fd;
	uint32_t cmd_op;
	uint32_t pad1;
	uint64_t addr;
	uint32_t len;
	uint32_t uring_cmd_flags;
	uint64_t user_data;
	uint16_t buf_index;
	uint16_t personality;
	uint32_t file_index;
	unsigned char cmd[80];		/* struct fuse_uring_cmd_req */
};

struct io_uring_cqe {
	uint64_t user_data;
	int32_t res;
	uint32_t flags;
};

_Static_assert(sizeof(struct fuse_uring_cmd_req) == 24, "fuse_uring_cmd_req");
_Static_assert(sizeof(struct fuse_uring_ent_in_out) == 32, "fuse_uring_ent_in_out");
_Static_assert(sizeof(struct fuse_uring_req_header) == 288, "fuse_uring_req_header");
_Static_assert(sizeof(struct io_uring_params) == 120, "io_uring_params");
_Static_assert(sizeof(struct io_uring_sqe128) == 128, "io_uring_sqe128");
_Static_assert(offsetof(struct io_uring_sqe128, cmd) == 48, "sqe cmd");
_Static_assert(offsetof(struct io_uring_sqe128, user_data) == 32, "sqe user_data");
_Static_assert(sizeof(struct io_uring_cqe) == 16, "io_uring_cqe");

_Static_assert(sizeof(struct fuse_in_header) == 40, "fuse_in_header");
_Static_assert(sizeof(struct fuse_out_header) == 16, "fuse_out_header");
_Static_assert(sizeof(struct fuse_init_in) == 64, "fuse_init_in");
_Static_assert(sizeof(struct fuse_init_out) == 64, "fuse_init_out");
_Static_assert(sizeof(struct fuse_attr) == 88, "fuse_attr");
_Static_assert(sizeof(struct fuse_attr_out) == 104, "fuse_attr_out");
_Static_assert(sizeof(struct fuse_getattr_in) == 16, "fuse_getattr_in");
_Static_assert(sizeof(struct fuse_setattr_in) == 88, "fuse_setattr_in");
_Static_assert(sizeof(struct fuse_open_in) == 8, "fuse_open_in");
_Static_assert(sizeof(struct fuse_open_out) == 16, "fuse_open_out");
_Static_assert(sizeof(struct fuse_release_in) == 24, "fuse_release_in");
_Static_assert(sizeof(struct fuse_flush_in) == 24, "fuse_flush_in");
_Static_assert(sizeof(struct fuse_read_in) == 40, "fuse_read_in");
_Static_assert(sizeof(struct fuse_write_in) == 40, "fuse_write_in");
_Static_assert(sizeof(struct fuse_write_out) == 8, "fuse_write_out");
_Static_assert(sizeof(struct fuse_fsync_in) == 16, "fuse_fsync_in");
_Static_assert(sizeof(struct fuse_fallocate_in) == 32, "fuse_fallocate_in");
_Static_assert(sizeof(struct fuse_lseek_in) == 24, "fuse_lseek_in");
_Static_assert(sizeof(struct fuse_lseek_out) == 8, "fuse_lseek_out");
_Static_assert(sizeof(struct fuse_statfs_out) == 80, "fuse_statfs_out");
_Static_assert(sizeof(struct fuse_notify_inval_inode_out) == 24, "fuse_notify_inval_inode_out");
_Static_assert(sizeof(struct fuse_notify_store_out) == 24, "fuse_notify_store_out");
_Static_assert(sizeof(struct fuse_interrupt_in) == 8, "fuse_interrupt_in");
_Static_assert(sizeof(struct fuse_batch_forget_in) == 8, "fuse_batch_forget_in");
_Static_assert(sizeof(struct fuse_backing_map) == 16, "fuse_backing_map");
_Static_assert(offsetof(struct fuse_init_out, max_stack_depth) == 36, "max_stack_depth");

/*
 * The NBD protocol (doc/proto.md of the NBD project), the subset a client
 * of fixed newstyle servers speaks. Every field goes over the wire in
 * network byte order: the structs are packed and their fields converted
 * with htobe and betoh at every use.
 */
#define NBD_DEFAULT_PORT	"10809"
#define NBD_MAGIC		0x4e42444d41474943ULL	/* "NBDMAGIC" */
#define NBD_OPT_MAGIC		0x49484156454f5054ULL	/* "IHAVEOPT" */
#define NBD_OLDSTYLE_MAGIC	0x00420281861253ULL	/* cliserv_magic */
#define NBD_REP_MAGIC		0x3e889045565a9ULL
#define NBD_REQUEST_MAGIC	0x25609513
#define NBD_SIMPLE_REPLY_MAGIC	0x67446698
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33ef

/* handshake flags, and the client's answer */
#define NBD_FLAG_FIXED_NEWSTYLE	(1 << 0)
#define NBD_FLAG_NO_ZEROES	(1 << 1)

/* options, and the server's replies to them */
#define NBD_OPT_ABORT		2
#define NBD_OPT_GO		7
#define NBD_OPT_STRUCTURED_REPLY 8
#define NBD_OPT_SET_META_CONTEXT 10
#define NBD_REP_ACK		1
#define NBD_REP_INFO		3
#define NBD_REP_META_CONTEXT	4
#define NBD_REP_ERR		(1U << 31)	/* every error reply has it */
#define NBD_REP_ERR_UNSUP	(NBD_REP_ERR | 1)
#define NBD_INFO_EXPORT		0
#define NBD_INFO_BLOCK_SIZE	3
#define NBD_MAX_STRING		4096		/* names and messages */

/* transmission flags */
#define NBD_FLAG_HAS_FLAGS	(1 << 0)
#define NBD_FLAG_READ_ONLY	(1 << 1)
#define NBD_FLAG_SEND_FLUSH	(1 << 2)
#define NBD_FLAG_SEND_FUA	(1 << 3)
#define NBD_FLAG_SEND_TRIM	(1 << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1 << 6)
#define NBD_FLAG_SEND_DF	(1 << 7)
#define NBD_FLAG_CAN_MULTI_CONN	(1 << 8)

/* commands and their flags */
#define NBD_CMD_READ		0
#define NBD_CMD_WRITE		1
#define NBD_CMD_DISC		2
#define NBD_CMD_FLUSH		3
#define NBD_CMD_TRIM		4
#define NBD_CMD_WRITE_ZEROES	6
#define NBD_CMD_BLOCK_STATUS	7
#define NBD_CMD_FLAG_FUA	(1 << 0)
#define NBD_CMD_FLAG_NO_HOLE	(1 << 1)
#define NBD_CMD_FLAG_DF		(1 << 2)	/* one content chunk */

/* structured reply chunks */
#define NBD_REPLY_FLAG_DONE	(1 << 0)
#define NBD_REPLY_TYPE_NONE	0
#define NBD_REPLY_TYPE_OFFSET_DATA 1
#define NBD_REPLY_TYPE_OFFSET_HOLE 2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_ERROR_BIT (1 << 15)	/* every error chunk has it */
#define NBD_STATE_HOLE		(1 << 0)	/* base:allocation */

/* the error values a reply carries */
#define NBD_EPERM		1
#define NBD_EIO			5
#define NBD_ENOMEM		12
#define NBD_EINVAL		22
#define NBD_ENOSPC		28
#define NBD_EOVERFLOW		75
#define NBD_ENOTSUP		95
#define NBD_ESHUTDOWN		108

struct nbd_option {
	uint64_t magic;			/* NBD_OPT_MAGIC */
	uint32_t option;
	uint32_t length;		/* of the data that follows */
} __attribute__((packed));

struct nbd_option_reply {
	uint64_t magic;			/* NBD_REP_MAGIC */
	uint32_t option;
	uint32_t type;
	uint32_t length;
} __attribute__((packed));

struct nbd_info_export {		/* NBD_REP_INFO's NBD_INFO_EXPORT */
	uint16_t type;
	uint64_t size;
	uint16_t flags;
} __attribute__((packed));

struct nbd_info_block_size {		/* NBD_REP_INFO's NBD_INFO_BLOCK_SIZE */
	uint16_t type;
	uint32_t minimum, preferred, maximum;
} __attribute__((packed));

struct nbd_request {
	uint32_t magic;			/* NBD_REQUEST_MAGIC */
	uint16_t flags;
	uint16_t type;
	uint64_t cookie;
	uint64_t offset;
	uint32_t length;
} __attribute__((packed));

struct nbd_simple_reply {
	uint32_t magic;			/* NBD_SIMPLE_REPLY_MAGIC */
	uint32_t error;
	uint64_t cookie;
} __attribute__((packed));

struct nbd_structured_reply {
	uint32_t magic;			/* NBD_STRUCTURED_REPLY_MAGIC */
	uint16_t flags;
	uint16_t type;
	uint64_t cookie;
	uint32_t length;		/* of the payload that follows */
} __attribute__((packed));

_Static_assert(sizeof(struct nbd_option) == 16, "nbd_option");
_Static_assert(sizeof(struct nbd_option_reply) == 20, "nbd_option_reply");
_Static_assert(sizeof(struct nbd_info_export) == 12, "nbd_info_export");
_Static_assert(sizeof(struct nbd_info_block_size) == 14, "nbd_info_block_size");
_Static_assert(sizeof(struct nbd_request) == 28, "nbd_request");
_Static_assert(sizeof(struct nbd_simple_reply) == 16, "nbd_simple_reply");
_Static_assert(sizeof(struct nbd_structured_reply) == 20, "nbd_structured_reply");

/*
 * What a test harness needs to drive the request handler without /dev/fuse
 * (build fuseexport.c with -DFUSEEXPORT_NO_MAIN and link it in).
 *
 * fuseexport_new() takes the program's own command line (argv[0] included,
 * MOUNTPOINT required but not used) and opens the source exactly as the
 * program would, exiting with a message on bad input as the program does.
 * fuseexport_request() hands it one request as read(2) would have delivered
 * it, and copies the reply, if any, to reply (at most reply_size bytes).
 * It returns the reply's length (the out_header included), 0 for a request
 * that gets no reply, -EMSGSIZE for one longer than read(2) could have
 * delivered, or -errno where a server would halt the export because the
 * stream can no longer be trusted.
 */
struct export;
struct export *fuseexport_new(int argc, char *argv[]);
long fuseexport_request(struct export *e, const void *request, size_t len,
			void *reply, size_t reply_size);
void fuseexport_free(struct export *e);

/*
 * The NBD source's reply parser, for a fuzzer: fd holds what a server
 * sent (after the handshake) to a connection with these requests in
 * flight: cookie 1 a READ of 64 KiB at 4096, 2 a READ of 1 byte at 0,
 * 3 a WRITE, 4 a FLUSH, 5 a BLOCK_STATUS for SEEK_HOLE from 1000 (the
 * meta context id is 1). structured says whether structured replies were
 * negotiated. Returns the number of requests answered before the stream
 * ended or was found hostile.
 */
int fuseexport_nbd_replies(int fd, int structured);

/*
 * The partition table code, for a fuzzer: a source of size bytes whose
 * logical sector is sector bytes, its bytes given by read (n at pos into
 * buf: the number read, short only at the end, or -errno). Prints the
 * table into out as --partitions does, and looks partitions up as
 * --partition does: the first few that were printed, and one number past
 * the last. Returns the number of partitions, -EPROTO if a lookup does
 * not find what the walk found, or -errno (-EINVAL: no table).
 */
int fuseexport_fuzz_partitions(uint64_t size, unsigned sector,
			       ssize_t (*read)(void *buf, size_t n, uint64_t pos),
			       FILE *out);

/* GPT's CRC-32 of n more bytes at p after crc (0 to begin), for a fuzzer
 * that makes its tables' CRCs right */
uint32_t fuseexport_crc32(uint32_t crc, const unsigned char *p, size_t n);

/*
 * The snapshot FILE's reader, for a fuzzer: resume FILE (written by the
 * fuzzer) as a snapshot of the regular file source, exactly as an export
 * would, and if it is taken, read all of it, seek, write and flush.
 * Returns 1 if FILE was taken, 0 if refused, with why (one line, at most
 * n bytes) in why.
 */
int fuseexport_fuzz_snapshot(const char *file, const char *source, char *why,
			     size_t n);

/*
 * The option parser, for a fuzzer: argv as main() gets it (argv[0]
 * mount.fuseexport for mount(8)'s helper calls; argv and its strings are
 * written to, as getopt and -o lists do). Never exits: returns 0 (parsed),
 * 1 (bad: why holds the message, 512 bytes), 2 (-h or -V) or 3 (mount -f).
 */
int fuseexport_fuzz_options(int argc, char *argv[], char *why);

/*
 * The other parsers of text from outside, for a fuzzer; none exits.
 * fuseexport_fuzz_control() feeds n bytes to the control FIFO's line
 * reader in pieces of chunk bytes (0: as much as it takes), as read(2)
 * would, each line carried out on e (made by fuseexport_new() with
 * --control, which makes no FIFO). fuseexport_fuzz_rule() parses a fault
 * rule, fuseexport_fuzz_uri() an NBD URI (0: good, -1: refused);
 * fuseexport_fuzz_mountinfo() looks for a FUSE mount on path in n bytes of
 * mountinfo lines (1: found, 0: not, -1: no memory).
 */
void fuseexport_fuzz_control(struct export *e, const char *data, size_t n,
			     size_t chunk);
int fuseexport_fuzz_rule(const char *text);
int fuseexport_fuzz_uri(const char *uri);
int fuseexport_fuzz_mountinfo(const char *text, size_t n, const char *path);

/*
 * The NBD handshake, for a fuzzer: fd is a socket whose peer sent what a
 * server would (the options fuseexport sends go to the peer, unread).
 * Returns 0 with the export's minimum block size and maximum payload, as
 * the handshake agreed them, or -1 where it refused the server.
 */
int fuseexport_fuzz_nbd_handshake(int fd, uint32_t *min_block, uint32_t *max_payload);

#endif
