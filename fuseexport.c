/* fuseexport.c - one raw file or block device as one regular file, through FUSE
 *
 * Speaks the kernel's FUSE protocol (include/uapi/linux/fuse.h, 7.9 to 7.45)
 * on /dev/fuse itself, with no libfuse: it mounts with mount(2) (without
 * root, through fusermount3), then serves requests with one thread per
 * queue, each blocking in read(2) on its own /dev/fuse fd, or with a thread
 * per CPU on FUSE over io_uring; reads and writes may bypass it altogether
 * by kernel passthrough. Modelled on QEMU's FUSE block export
 * (block/export/fuse.c). The usage text below is what -h prints.
 *
 * Copyright the fuseexport authors.
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64	/* 32-bit builds: offsets past 4 GiB */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fuseexport.h"

#define VERSION "0.1"

static const char usage_text[] =
"usage: fuseexport [OPTIONS] SOURCE MOUNTPOINT\n"
"\n"
"Export SOURCE (a raw image file or a block device) as the regular file\n"
"MOUNTPOINT, which must exist and may be SOURCE itself. The export ends with\n"
"umount MOUNTPOINT or SIGTERM to the server. Without root it mounts through\n"
"fusermount3. As mount.fuseexport it takes mount(8)'s helper arguments:\n"
"SOURCE MOUNTPOINT [-o OPTS] [-n] [-v].\n"
"\n"
"  -w, --writable          allow writes (default: read-only)\n"
"  -g, --growable          writes past the end grow the image (implies -w)\n"
"  -f, --foreground        stay in the foreground\n"
"  -d, --debug             one line per request on stderr (implies -f)\n"
"  -q, --queues=N          N queues and threads (default: online CPUs, max 64)\n"
"      --allow-other=auto|on|off   let other users in (default: auto)\n"
"      --passthrough=auto|on|off   kernel passthrough of reads and writes\n"
"      --io-uring=auto|on|off      take requests through FUSE over io_uring\n"
"                                  (default: off)\n"
"      --offset=BYTES      export SOURCE from this offset (K, M, G, T suffixes)\n"
"      --size=BYTES        export only this many bytes of SOURCE\n"
"  -o OPTS                 the same as a mount option list: ro, rw, growable,\n"
"                          allow_other, queues=N, passthrough=MODE,\n"
"                          io_uring=MODE, offset=,\n"
"                          size=; generic mount options are ignored\n"
"  -h, --help              show this help\n"
"  -V, --version           show the version\n";

enum {
	MAX_QUEUES = 64,
	MAX_WRITE = 1 << 20,			/* largest READ or WRITE payload */
	DATA_SIZE = MAX_WRITE + 4096,		/* a queue's payload buffer */
	/* read(2) puts a request's first REQ_HEAD bytes in the header buffer
	 * and the rest in the payload buffer: a WRITE's data lands there
	 * directly */
	REQ_HEAD = sizeof(struct fuse_in_header) + sizeof(struct fuse_write_in),
	ATTR_VALID_SECONDS = 1,
	RING_DEPTH = 16,			/* entries per io_uring queue */
	/* a mapping of the source builds up page tables, as many as a page
	 * per READ at worst: one of over MAP_WHOLE is made anew every
	 * MAP_REFRESH READs, which bounds them at a few MiB */
	MAP_REFRESH = 1024,
	FH_WRITES = 1,				/* an open's fh: it may write */
};
#define MAP_WHOLE (4ULL << 30)

enum { AUTO = -1, OFF = 0, ON = 1 };

struct queue {
	struct export *e;
	int fd;
	pthread_t thread;
	struct {
		struct fuse_in_header in;
		union {
			struct fuse_init_in init;
			struct fuse_getattr_in getattr;
			struct fuse_setattr_in setattr;
			struct fuse_open_in open;
			struct fuse_release_in release;
			struct fuse_flush_in flush;
			struct fuse_read_in read;
			struct fuse_write_in write;
			struct fuse_fsync_in fsync;
			struct fuse_fallocate_in fallocate;
			struct fuse_lseek_in lseek;
		};
	} req;
	char *data;				/* DATA_SIZE bytes */
	struct fuse_out_header out;
	union {
		struct fuse_init_out init;
		struct fuse_attr_out attr;
		struct fuse_open_out open;
		struct fuse_write_out write;
		struct fuse_lseek_out lseek;
		struct fuse_statfs_out statfs;
	} reply;
	struct iovec iov[2];			/* the reply as sent */
	bool from_ring;				/* io_uring: the op struct came whole */
	bool map_locked;			/* the reply is sent from the mapping:
						 * map_lock is held until it is */
};

/* FUSE over io_uring: a ring per possible CPU, its thread pinned there,
 * each of its entries a request's header and payload buffers */
struct ring_entry {
	struct fuse_uring_req_header header;
	char *payload;				/* DATA_SIZE bytes */
	struct iovec iov[2];
};

struct ring {
	struct export *e;
	unsigned qid;
	pthread_t thread;
	int fd;
	struct queue q;		/* serve()'s buffers; q.data: the entry's payload */
	uint32_t *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
	struct io_uring_sqe128 *sqes;
	struct io_uring_cqe *cqes;
	uint32_t pending;			/* SQEs filled, not yet submitted */
	struct ring_entry entry[RING_DEPTH];
};

/* One export: the source, what the exported file looks like, the queues */
struct export {
	const char *source_path;
	const char *mountpoint;		/* absolute once checked */
	char *mountpoint_buf;		/* which realpath() allocated */
	int source_fd;
	bool is_blockdev, writable, growable, foreground, debug;
	bool queues_given;		/* -q: exactly that many, or fail */
	bool quiet;			/* a test harness: halts say nothing */
	int allow_other, passthrough, io_uring;	/* AUTO, OFF or ON */
	unsigned queues;
	uint64_t offset;		/* the window's start in the source */
	uint64_t window;		/* its length; 0: to the end */
	_Atomic uint64_t size;		/* the exported file's size */
	/* a fixed-size export's source, mapped: READ replies are written
	 * from here (NULL: no mapping) */
	char *_Atomic map;
	uint64_t map_size;		/* the bytes mapped: the size it had
					 * then (truncate may grow it since) */
	atomic_uint map_reads;		/* READs served from it */
	/* READs sent from the mapping hold map_lock shared until sent; a
	 * shrink of the source holds it exclusive, and while shrinking is
	 * set new READs take pread, so none meets a page that went away */
	pthread_rwlock_t map_lock;
	atomic_bool shrinking;
	atomic_bool flush_failed;	/* a flush of the source failed once */

	pthread_mutex_t lock;		/* resizing, and the fields below */
	uint32_t mode, uid, gid;
	struct timespec atime, mtime, ctime;

	uint32_t minor;			/* negotiated protocol minor */
	bool initialized;
	uint32_t open_flags;		/* for OPEN replies without passthrough */
	const char *no_passthrough;	/* why passthrough is off, if it is */
	int backing_id;			/* the source as passthrough backing
					 * file: 0 not yet, < 0 refused */
	int fuse_fd;
	struct queue *queue;
	bool uring;			/* FUSE over io_uring negotiated */
	struct ring *rings;
	unsigned nrings;
	atomic_int running;		/* queue threads still serving */
	atomic_int ready_fd;		/* tells the waiting parent we're live */
	atomic_bool halted;
};

/* The export once mounted: a setup error after that unmounts it */
static struct export *mounted_export;
static void unmount_export(struct export *e, bool force);

/* Setup errors: print "fuseexport: <fmt>", undo the mount if there is one,
 * and exit 1. A format ending in ':' gets ": strerror(errno)" appended, as
 * suckless's eprintf does. */
static _Noreturn __attribute__((format(printf, 1, 2)))
void die(const char *fmt, ...)
{
	int saved = errno;
	size_t n = strlen(fmt);
	va_list ap;

	fputs("fuseexport: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (n && fmt[n - 1] == ':')
		fprintf(stderr, " %s", strerror(saved));
	fputc('\n', stderr);
	if (mounted_export)
		unmount_export(mounted_export, true);
	exit(1);
}

/* Halt the export: the request stream can no longer be trusted. Always
 * returns -EPROTO, the handler's verdict. */
static __attribute__((format(printf, 2, 3)))
int halt(struct export *e, const char *fmt, ...)
{
	va_list ap;

	atomic_store(&e->halted, true);
	if (e->quiet)
		return -EPROTO;
	fputs("fuseexport: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return -EPROTO;
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* Read n bytes at pos of the source, fewer at its end. Returns the number
 * read, or -errno if nothing could be read. */
static ssize_t read_source(struct export *e, void *buf, size_t n, uint64_t pos)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = pread(e->source_fd, (char *)buf + done, n - done,
				  e->offset + pos + done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return done ? (ssize_t)done : -errno;
		if (r == 0)
			break;
		done += r;
	}
	return done;
}

/* Write n bytes at pos of the source. Returns the number written (short
 * only after a fault, which the next write will meet), or -errno. */
static ssize_t write_source(struct export *e, const void *buf, size_t n,
			    uint64_t pos)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = pwrite(e->source_fd, (const char *)buf + done,
				   n - done, e->offset + pos + done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return done ? (ssize_t)done : -errno;
		if (r == 0)
			return done ? (ssize_t)done : -EIO;
		done += r;
	}
	return done;
}

/* Raise the exported size to at least end (growable exports) */
static void grow_to(struct export *e, uint64_t end)
{
	uint64_t size = atomic_load(&e->size);

	while (size < end && !atomic_compare_exchange_weak(&e->size, &size, end))
		;
}

/* The exported size. A growable export that passes through has the
 * source's own, which passthrough writes change without a word to us;
 * every other export's size changes only here, and is kept. */
static uint64_t export_size(struct export *e)
{
	struct stat st;

	if (e->growable && !e->no_passthrough && fstat(e->source_fd, &st) == 0)
		atomic_store(&e->size, st.st_size);
	return atomic_load(&e->size);
}

/* May the export change size? A disk or a window keeps its own. */
static bool resizable(struct export *e)
{
	return !e->is_blockdev && !e->offset && !e->window;
}

/* Resize a regular-file source; the caller holds e->lock. Returns 0 or -errno. */
static int resize_source(struct export *e, uint64_t size)
{
	uint64_t old = export_size(e);
	int r = 0;

	if (size == old)
		return 0;
	if (!resizable(e))
		return -EINVAL;
	if (size > (uint64_t)INT64_MAX)
		return -EFBIG;
	if (size < old) {	/* wait for READs sending what goes away */
		atomic_store(&e->shrinking, true);
		pthread_rwlock_wrlock(&e->map_lock);
	}
	if (ftruncate(e->source_fd, size) < 0)
		r = -errno;
	else
		atomic_store(&e->size, size);
	if (size < old) {
		pthread_rwlock_unlock(&e->map_lock);
		atomic_store(&e->shrinking, false);
	}
	return r;
}

/* Make the source's writes durable. Once a flush has failed, every later
 * one fails with EIO: the kernel reports a writeback error once per open
 * file, and all clients share ours, so the next to ask would hear nothing.
 * Returns 0 or -errno. */
static int flush_source(struct export *e, bool datasync)
{
	if (atomic_load(&e->flush_failed))
		return -EIO;
	if ((datasync ? fdatasync(e->source_fd) : fsync(e->source_fd)) == 0)
		return 0;
	atomic_store(&e->flush_failed, true);
	return -errno;
}

/* Zero len bytes at pos of the source through the page cache, with the
 * queue's payload buffer as the source of zeros. Returns 0 or -errno. */
static int write_zeros(struct export *e, struct queue *q, uint64_t pos,
		       uint64_t len)
{
	memset(q->data, 0, min_u64(len, DATA_SIZE));
	while (len) {
		ssize_t r = write_source(e, q->data, min_u64(len, DATA_SIZE), pos);
		if (r < 0)
			return r;
		pos += r;
		len -= r;
	}
	return 0;
}

/* Make len bytes at pos read as zeros, leaving a hole (punch) or
 * allocated zeros where the source can. Returns 0 or -errno. */
static int zero_range(struct export *e, struct queue *q, uint64_t pos,
		      uint64_t len, bool punch)
{
	int mode = FALLOC_FL_KEEP_SIZE |
		   (punch ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE);
	uint64_t head = 0, tail = 0;
	int r;

	if (e->is_blockdev) {
		/* a disk takes only whole sectors: zero the ragged ends */
		int sector = 512;
		ioctl(e->source_fd, BLKSSZGET, &sector);
		head = min_u64(len, (sector - (e->offset + pos) % sector) % sector);
		tail = (e->offset + pos + len) % sector;
		if (head + tail >= len) {
			head = len;
			tail = 0;
		}
		if (head && (r = write_zeros(e, q, pos, head)) < 0)
			return r;
		if (tail && (r = write_zeros(e, q, pos + len - tail, tail)) < 0)
			return r;
		pos += head;
		len -= head + tail;
		if (!len)
			return 0;
	}
	if (fallocate(e->source_fd, mode, e->offset + pos, len) == 0)
		return 0;
	if (errno != EOPNOTSUPP && errno != EINVAL)
		return -errno;
	/* tmpfs punches holes but has no zero range; a hole reads as zeros */
	if (!punch && !e->is_blockdev &&
	    fallocate(e->source_fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
		      e->offset + pos, len) == 0)
		return 0;
	if (e->is_blockdev) {
		uint64_t range[2] = { e->offset + pos, len };
		if (ioctl(e->source_fd, BLKZEROOUT, range) == 0)
			return 0;
	}
	return write_zeros(e, q, pos, len);
}

static void fill_attr(struct export *e, struct fuse_attr *a)
{
	struct stat st;
	uint64_t size = export_size(e);
	uint64_t sectors = (size + 511) / 512;

	memset(a, 0, sizeof(*a));
	a->ino = FUSE_ROOT_ID;
	a->size = size;
	a->blocks = sectors;
	if (!e->is_blockdev && fstat(e->source_fd, &st) == 0)
		a->blocks = min_u64(st.st_blocks, sectors);
	a->nlink = 1;
	a->blksize = 4096;
	pthread_mutex_lock(&e->lock);
	a->mode = S_IFREG | e->mode;
	a->uid = e->uid;
	a->gid = e->gid;
	a->atime = e->atime.tv_sec;
	a->atimensec = e->atime.tv_nsec;
	a->mtime = e->mtime.tv_sec;
	a->mtimensec = e->mtime.tv_nsec;
	a->ctime = e->ctime.tv_sec;
	a->ctimensec = e->ctime.tv_nsec;
	pthread_mutex_unlock(&e->lock);
}

/*
 * The handlers, one per opcode. Each takes the request in q->req (and a
 * WRITE's payload in q->data), with len the bytes after the in_header, and
 * returns the length of its reply payload, put in q->reply unless it points
 * q->iov[1] elsewhere, or -errno.
 */

/* INIT: agree on the protocol, ask for parallel requests and 1 MiB I/O */
static int fuse_init(struct export *e, struct queue *q, size_t len)
{
	const struct fuse_init_in *in = &q->req.init;
	struct fuse_init_out *out = &q->reply.init;
	uint64_t offered = in->flags, flags;
	long page = sysconf(_SC_PAGESIZE);

	memset(out, 0, sizeof(*out));
	out->major = FUSE_KERNEL_VERSION;
	out->minor = FUSE_KERNEL_MINOR_VERSION;
	if (in->major > FUSE_KERNEL_VERSION)
		return sizeof(*out);	/* the kernel re-sends INIT with ours */
	if (in->major < FUSE_KERNEL_VERSION || in->minor < FUSE_OLDEST_MINOR)
		return halt(e, "halting: the kernel speaks FUSE %u.%u, older than 7.%u",
			    in->major, in->minor, FUSE_OLDEST_MINOR);
	if (e->initialized)
		return halt(e, "halting: a second INIT");

	if (len >= sizeof(*in) && (in->flags & FUSE_INIT_EXT))
		offered |= (uint64_t)in->flags2 << 32;
	/* no FUSE_ATOMIC_O_TRUNC: with it the kernel takes the size for 0
	 * after an O_TRUNC open, whatever we keep, and a mapping of the
	 * export faults (SIGBUS); without it O_TRUNC comes as a SETATTR */
	flags = offered & (FUSE_ASYNC_READ |
			   FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_MAX_PAGES |
			   FUSE_INIT_EXT | FUSE_DIRECT_IO_ALLOW_MMAP |
			   FUSE_HANDLE_KILLPRIV_V2);
	/* FUSE_HANDLE_KILLPRIV_V2 makes us the one to clear setuid, setgid
	 * and capabilities on write, truncate and chown: the export never has
	 * any (SETATTR refuses those bits, there are no xattrs), and in return
	 * the kernel stops looking for them on every write (SB_NOSEC). */
	e->minor = min_u64(in->minor, FUSE_KERNEL_MINOR_VERSION);
	/* Direct I/O keeps a single copy of the data cached, the source's;
	 * without mmap on direct I/O files (before 6.6) use the page cache. */
	if (flags & FUSE_DIRECT_IO_ALLOW_MMAP)
		e->open_flags = FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES;
	if (!e->no_passthrough && !(offered & FUSE_PASSTHROUGH))
		e->no_passthrough = "the kernel offers no FUSE passthrough "
				    "(Linux 6.9 and later, CONFIG_FUSE_PASSTHROUGH)";
	if (e->io_uring != OFF && (offered & FUSE_OVER_IO_URING))
		flags |= FUSE_OVER_IO_URING | FUSE_INIT_EXT;
	else if (e->io_uring == ON)
		return halt(e, "--io-uring=on: the kernel offers no FUSE over io_uring "
			    "(Linux 6.14 and later, with "
			    "/sys/module/fuse/parameters/enable_uring set to Y)");
	e->uring = flags & FUSE_OVER_IO_URING;
	if (!e->no_passthrough) {
		flags |= FUSE_PASSTHROUGH | FUSE_INIT_EXT;
		out->max_stack_depth = 1;	/* the source is no FUSE file */
	} else if (e->passthrough == ON) {
		return halt(e, "--passthrough=on: %s", e->no_passthrough);
	}
	e->initialized = true;

	out->minor = e->minor;
	out->max_readahead = in->max_readahead;
	out->flags = flags;
	out->flags2 = flags >> 32;
	out->max_background = 4096;	/* never throttle a busy client */
	out->congestion_threshold = 3072;
	out->max_write = MAX_WRITE;
	out->time_gran = 1;
	out->max_pages = MAX_WRITE / page;
	return e->minor < 23 ? FUSE_COMPAT_22_INIT_OUT_SIZE : (int)sizeof(*out);
}

/* LOOKUP: the root is the only inode, a file, so no name is found in it */
static int fuse_lookup(struct export *e, struct queue *q, size_t len)
{
	(void)e, (void)q, (void)len;
	return -ENOENT;
}

static int fuse_getattr(struct export *e, struct queue *q, size_t len)
{
	struct fuse_attr_out *out = &q->reply.attr;

	(void)len;
	memset(out, 0, sizeof(*out));
	out->attr_valid = ATTR_VALID_SECONDS;
	fill_attr(e, &out->attr);
	return sizeof(*out);
}

static void set_time(struct timespec *t, uint64_t sec, uint32_t nsec, bool now)
{
	if (now) {
		clock_gettime(CLOCK_REALTIME, t);
	} else {
		t->tv_sec = sec;
		t->tv_nsec = nsec;
	}
}

/* SETATTR: size on writable exports of regular files; permission bits
 * (no write bits read-only, none for group and other without allow_other);
 * owner only with allow_other; times always, kept for the export's life */
static int fuse_setattr(struct export *e, struct queue *q, size_t len)
{
	const struct fuse_setattr_in *in = &q->req.setattr;
	uint32_t valid = in->valid, mode = in->mode & 07777;
	int r = 0;

	/* an O_TRUNC open comes as size 0 without a file handle (truncate(2)
	 * of the path to 0 looks the same): a fixed-size export keeps its
	 * size, as a disk does */
	if ((valid & FATTR_SIZE) && !in->size && !(valid & FATTR_FH) &&
	    !e->growable)
		valid &= ~FATTR_SIZE;

	if ((valid & (FATTR_UID | FATTR_GID)) && !e->allow_other)
		return -EPERM;
	if (valid & FATTR_MODE) {
		if ((in->mode & S_IFMT) && (in->mode & S_IFMT) != S_IFREG)
			return -EINVAL;
		if ((mode & ~0777) || ((mode & 077) && !e->allow_other))
			return -EPERM;
		if ((mode & 0222) && !e->writable)
			return -EROFS;
	}
	if ((valid & FATTR_SIZE) && !e->writable)
		return -EROFS;

	pthread_mutex_lock(&e->lock);
	if (valid & FATTR_SIZE)
		r = resize_source(e, in->size);
	if (r == 0) {
		if (valid & FATTR_MODE)
			e->mode = mode;
		if (valid & FATTR_UID)
			e->uid = in->uid;
		if (valid & FATTR_GID)
			e->gid = in->gid;
		if (valid & (FATTR_ATIME | FATTR_ATIME_NOW))
			set_time(&e->atime, in->atime, in->atimensec,
				 valid & FATTR_ATIME_NOW);
		if (valid & (FATTR_MTIME | FATTR_MTIME_NOW))
			set_time(&e->mtime, in->mtime, in->mtimensec,
				 valid & FATTR_MTIME_NOW);
		set_time(&e->ctime, in->ctime, in->ctimensec,
			 !(valid & FATTR_CTIME));
	}
	pthread_mutex_unlock(&e->lock);
	return r < 0 ? r : fuse_getattr(e, q, len);
}

/* Register the source with the kernel as the passthrough backing file,
 * once for the export's life: one backing file for every open, as the
 * kernel wants. Returns the backing id, or -errno if it is refused. */
static int open_backing(struct export *e)
{
	struct fuse_backing_map map = { .fd = e->source_fd };
	int id;

	pthread_mutex_lock(&e->lock);
	if (!e->backing_id) {
		id = ioctl(e->fuse_fd, FUSE_DEV_IOC_BACKING_OPEN, &map);
		e->backing_id = id > 0 ? id : -errno;
	}
	id = e->backing_id;
	pthread_mutex_unlock(&e->lock);
	return id;
}

/* OPEN: writes only on writable exports (O_TRUNC comes as a SETATTR).
 * The file handle says whether the open may write: only such a close
 * flushes the source. */
static int fuse_open(struct export *e, struct queue *q, size_t len)
{
	uint32_t flags = q->req.open.flags;
	struct fuse_open_out *out = &q->reply.open;
	int r;

	(void)len;
	if (!e->writable && (flags & O_ACCMODE) != O_RDONLY)
		return -EROFS;
	memset(out, 0, sizeof(*out));
	out->fh = (flags & O_ACCMODE) != O_RDONLY ? FH_WRITES : 0;
	out->open_flags = e->open_flags;
	/* Every open of the inode must pass through, to the same backing
	 * file, and every path of it (read, write, splice, mmap) then goes
	 * there: so only exports whose writes may go anywhere do (read-only
	 * and growable ones). */
	if (!e->no_passthrough && (r = open_backing(e)) > 0) {
		out->open_flags = FOPEN_PASSTHROUGH;
		out->backing_id = r;
	}
	return sizeof(*out);
}

/* RELEASE and DESTROY: nothing to let go of, and nothing to say */
static int fuse_nothing(struct export *e, struct queue *q, size_t len)
{
	(void)e, (void)q, (void)len;
	return 0;
}

/* Map a fixed-size export's source, so READ replies go to the kernel
 * straight from the source's pages: one copy, not two. The server never
 * touches the mapping itself; a page the source cannot give fails the
 * writev, not the server. With where, map it anew over itself, dropping
 * the page tables READs built up (on every kernel; MADV_DONTNEED frees
 * them only with CONFIG_PT_RECLAIM): the kernel swaps the two under its
 * mmap lock, so a writev in another thread meets one or the other, never
 * a hole. Returns the mapping, or NULL: then READs use pread. */
static char *map_source(struct export *e, char *where)
{
	uint64_t skew = e->offset % (uint64_t)sysconf(_SC_PAGESIZE);
	char *m;

	if (!where) {		/* before the queues start */
		e->map_size = atomic_load(&e->size);
		if (e->growable || !e->map_size || e->map_size > SIZE_MAX - skew)
			return NULL;
	}
	m = mmap(where ? where - skew : NULL, skew + e->map_size, PROT_READ,
		 MAP_SHARED | (where ? MAP_FIXED : 0), e->source_fd,
		 e->offset - skew);
	m = m == MAP_FAILED ? NULL : m + skew;
	atomic_store(&e->map, m);
	return m;
}

/* READ: the source's bytes, short at the end, sent by writev from the
 * mapping (holding map_lock until sent) or from q->data */
static int fuse_read(struct export *e, struct queue *q, size_t len)
{
	const struct fuse_read_in *in = &q->req.read;
	char *map = atomic_load(&e->map);
	uint64_t size, n;
	ssize_t r;

	(void)len;
	if (in->size > MAX_WRITE || in->offset > (uint64_t)INT64_MAX - in->size)
		return -EINVAL;
	/* pread into a ring's buffer, while the source shrinks, and for
	 * O_DIRECT, which asks for the medium: a failing source is seen */
	if (q->from_ring || (in->flags & O_DIRECT) || atomic_load(&e->shrinking))
		map = NULL;
	if (map) {
		pthread_rwlock_rdlock(&e->map_lock);
		q->map_locked = true;
	}
	size = export_size(e);
	if (in->offset >= size)
		return 0;
	n = min_u64(in->size, size - in->offset);
	if (in->offset + n > e->map_size)	/* grown since it was mapped */
		map = NULL;
	else if (map && e->map_size > MAP_WHOLE &&
		 atomic_fetch_add(&e->map_reads, 1) % MAP_REFRESH == MAP_REFRESH - 1)
		map = map_source(e, map);	/* drops its page tables */
	if (map) {
		/* one copy, made by writev: a page the source cannot give
		 * fails it with EFAULT, and the kernel gives the reader EIO */
		q->iov[1].iov_base = map + in->offset;
		return n;
	}
	r = read_source(e, q->data, n, in->offset);
	q->iov[1].iov_base = q->data;
	return r;
}

/* WRITE: the payload came into q->data. Past the end a fixed-size export
 * says ENOSPC, or writes what fits; a growable one grows. */
static int fuse_write(struct export *e, struct queue *q, size_t len)
{
	const struct fuse_write_in *in = &q->req.write;
	uint64_t size = atomic_load(&e->size), n = in->size;
	ssize_t r;

	if (len - sizeof(*in) != n)
		return -EINVAL;
	if (!e->writable)
		return -EROFS;
	if (in->offset > (uint64_t)INT64_MAX - n)
		return -EFBIG;
	if (!e->growable && in->offset + n > size) {
		n = in->offset < size ? size - in->offset : 0;
		if (!n && in->size)
			return -ENOSPC;
	}
	r = write_source(e, q->data, n, in->offset);
	if (r < 0)
		return r;
	if (e->growable)
		grow_to(e, in->offset + r);
	q->reply.write.size = r;
	q->reply.write.padding = 0;
	return sizeof(q->reply.write);
}

/* FLUSH (every close): what a writing open wrote reaches the disk; a
 * read-only close neither flushes nor takes another's error */
static int fuse_flush(struct export *e, struct queue *q, size_t len)
{
	(void)len;
	return q->req.flush.fh & FH_WRITES ? flush_source(e, true) : 0;
}

static int fuse_fsync(struct export *e, struct queue *q, size_t len)
{
	(void)len;
	return flush_source(e, q->req.fsync.fsync_flags & FUSE_FSYNC_FDATASYNC);
}

/* FALLOCATE: punch hole and zero range read as zeros afterwards; plain
 * allocation reserves space, growing the export as truncate would */
static int fuse_fallocate(struct export *e, struct queue *q, size_t len)
{
	const struct fuse_fallocate_in *in = &q->req.fallocate;
	uint64_t size = export_size(e), pos = in->offset, n = in->length;
	uint32_t mode = in->mode;
	int r;

	(void)len;
	if (!e->writable)
		return -EROFS;
	if (n == 0 || pos > (uint64_t)INT64_MAX - n)
		return -EINVAL;
	switch (mode) {
	case FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE:
	case FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE:
	case FALLOC_FL_ZERO_RANGE:
	case FALLOC_FL_KEEP_SIZE:
	case 0:
		break;
	default:
		return -EOPNOTSUPP;
	}
	if (pos + n > size && !(mode & FALLOC_FL_KEEP_SIZE) && !resizable(e))
		return -ENOSPC;		/* a disk or a window cannot grow */
	if (pos + n > size && (mode & FALLOC_FL_KEEP_SIZE)) {
		if (pos >= size)
			return 0;	/* nothing of the file lies there */
		n = size - pos;
	}
	if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
		uint64_t inside = pos < size ? min_u64(n, size - pos) : 0;

		if (inside && (r = zero_range(e, q, pos, inside,
					      mode & FALLOC_FL_PUNCH_HOLE)) < 0)
			return r;
		if (pos + n <= size)
			return 0;
		/* a zero range reaching past the end grows the export */
		pos = size > pos ? size : pos;
		n = in->offset + in->length - pos;
		mode = 0;
	}
	if (e->is_blockdev)
		return 0;		/* a disk's space is all there */
	pthread_mutex_lock(&e->lock);	/* a resize, as truncate's */
	r = fallocate(e->source_fd, mode, e->offset + pos, n) < 0 ? -errno : 0;
	if (r == 0 && !(mode & FALLOC_FL_KEEP_SIZE))
		grow_to(e, pos + n);
	pthread_mutex_unlock(&e->lock);
	return r;
}

/* LSEEK: SEEK_DATA and SEEK_HOLE as the source answers them */
static int fuse_lseek(struct export *e, struct queue *q, size_t len)
{
	const struct fuse_lseek_in *in = &q->req.lseek;
	uint64_t size = export_size(e);
	off_t r;

	(void)len;
	if (in->whence != SEEK_DATA && in->whence != SEEK_HOLE)
		return -EINVAL;
	if (in->offset >= size)
		return -ENXIO;
	r = lseek(e->source_fd, e->offset + in->offset, in->whence);
	if (r < 0)
		return -errno;
	q->reply.lseek.offset = min_u64(r - e->offset, size);
	if (in->whence == SEEK_DATA && q->reply.lseek.offset >= size)
		return -ENXIO;		/* the data lies past the window */
	return sizeof(q->reply.lseek);
}

/* STATFS: the export in 512-byte blocks; free space only where it can grow */
static int fuse_statfs(struct export *e, struct queue *q, size_t len)
{
	struct fuse_kstatfs *st = &q->reply.statfs.st;
	struct statfs sfs;

	(void)len;
	memset(st, 0, sizeof(*st));
	st->bsize = st->frsize = 512;
	st->blocks = (export_size(e) + 511) / 512;
	if (e->growable && fstatfs(e->source_fd, &sfs) == 0) {
		st->bfree = (uint64_t)sfs.f_bfree * sfs.f_bsize / 512;
		st->bavail = (uint64_t)sfs.f_bavail * sfs.f_bsize / 512;
		st->blocks += st->bfree;	/* used: the export's size */
	}
	st->files = 1;
	st->namelen = 255;
	return sizeof(*st);
}

/* The dispatcher's table: name (for -d), the op struct a request must
 * carry, the handler (none: ENOSYS), and whether the kernel wants a reply */
static const struct operation {
	const char *name;
	size_t in_size;
	int (*handle)(struct export *, struct queue *, size_t);
	bool no_reply;
} operations[FUSE_OPCODE_END] = {
	[FUSE_LOOKUP] = { "LOOKUP", 0, fuse_lookup, false },
	[FUSE_FORGET] = { "FORGET", sizeof(struct fuse_forget_in), NULL, true },
	[FUSE_GETATTR] = { "GETATTR", 0, fuse_getattr, false },
	[FUSE_SETATTR] = { "SETATTR", sizeof(struct fuse_setattr_in), fuse_setattr, false },
	[FUSE_READLINK] = { "READLINK", 0, NULL, false },
	[FUSE_SYMLINK] = { "SYMLINK", 0, NULL, false },
	[FUSE_MKNOD] = { "MKNOD", 0, NULL, false },
	[FUSE_MKDIR] = { "MKDIR", 0, NULL, false },
	[FUSE_UNLINK] = { "UNLINK", 0, NULL, false },
	[FUSE_RMDIR] = { "RMDIR", 0, NULL, false },
	[FUSE_RENAME] = { "RENAME", 0, NULL, false },
	[FUSE_LINK] = { "LINK", 0, NULL, false },
	[FUSE_OPEN] = { "OPEN", sizeof(struct fuse_open_in), fuse_open, false },
	[FUSE_READ] = { "READ", sizeof(struct fuse_read_in), fuse_read, false },
	[FUSE_WRITE] = { "WRITE", sizeof(struct fuse_write_in), fuse_write, false },
	[FUSE_STATFS] = { "STATFS", 0, fuse_statfs, false },
	[FUSE_RELEASE] = { "RELEASE", sizeof(struct fuse_release_in), fuse_nothing, false },
	[FUSE_FSYNC] = { "FSYNC", sizeof(struct fuse_fsync_in), fuse_fsync, false },
	[FUSE_SETXATTR] = { "SETXATTR", 0, NULL, false },
	[FUSE_GETXATTR] = { "GETXATTR", 0, NULL, false },
	[FUSE_LISTXATTR] = { "LISTXATTR", 0, NULL, false },
	[FUSE_REMOVEXATTR] = { "REMOVEXATTR", 0, NULL, false },
	[FUSE_FLUSH] = { "FLUSH", sizeof(struct fuse_flush_in), fuse_flush, false },
	[FUSE_INIT] = { "INIT", FUSE_COMPAT_INIT_IN_SIZE, fuse_init, false },
	[FUSE_OPENDIR] = { "OPENDIR", 0, NULL, false },
	[FUSE_READDIR] = { "READDIR", 0, NULL, false },
	[FUSE_RELEASEDIR] = { "RELEASEDIR", 0, NULL, false },
	[FUSE_FSYNCDIR] = { "FSYNCDIR", 0, NULL, false },
	[FUSE_GETLK] = { "GETLK", 0, NULL, false },
	[FUSE_SETLK] = { "SETLK", 0, NULL, false },
	[FUSE_SETLKW] = { "SETLKW", 0, NULL, false },
	[FUSE_ACCESS] = { "ACCESS", 0, NULL, false },
	[FUSE_CREATE] = { "CREATE", 0, NULL, false },
	[FUSE_INTERRUPT] = { "INTERRUPT", sizeof(struct fuse_interrupt_in), NULL, true },
	[FUSE_BMAP] = { "BMAP", 0, NULL, false },
	[FUSE_DESTROY] = { "DESTROY", 0, fuse_nothing, false },
	[FUSE_IOCTL] = { "IOCTL", 0, NULL, false },
	[FUSE_POLL] = { "POLL", 0, NULL, false },
	[FUSE_NOTIFY_REPLY] = { "NOTIFY_REPLY", 0, NULL, true },
	[FUSE_BATCH_FORGET] = { "BATCH_FORGET", sizeof(struct fuse_batch_forget_in), NULL, true },
	[FUSE_FALLOCATE] = { "FALLOCATE", sizeof(struct fuse_fallocate_in), fuse_fallocate, false },
	[FUSE_READDIRPLUS] = { "READDIRPLUS", 0, NULL, false },
	[FUSE_RENAME2] = { "RENAME2", 0, NULL, false },
	[FUSE_LSEEK] = { "LSEEK", sizeof(struct fuse_lseek_in), fuse_lseek, false },
	[FUSE_COPY_FILE_RANGE] = { "COPY_FILE_RANGE", 0, NULL, false },
	[FUSE_SETUPMAPPING] = { "SETUPMAPPING", 0, NULL, false },
	[FUSE_REMOVEMAPPING] = { "REMOVEMAPPING", 0, NULL, false },
	[FUSE_SYNCFS] = { "SYNCFS", 0, NULL, false },
	[FUSE_TMPFILE] = { "TMPFILE", 0, NULL, false },
	[FUSE_STATX] = { "STATX", 0, NULL, false },
	[FUSE_COPY_FILE_RANGE_64] = { "COPY_FILE_RANGE_64", 0, NULL, false },
};

/* Serve the request of len bytes that read(2) left in q->req and q->data,
 * and build the reply in q->iov. Returns the number of iovecs to send (0:
 * no reply), or -errno if the export must halt. */
static int serve(struct export *e, struct queue *q, size_t len)
{
	const struct fuse_in_header *in = &q->req.in;
	const struct operation *op = NULL;
	size_t oplen;
	int r;

	if (len < sizeof(*in))
		return halt(e, "halting: a request of %zu bytes, shorter than its header",
			    len);
	if (in->len != len)
		return halt(e, "halting: a request says %u bytes, %zu came",
			    in->len, len);
	if (in->opcode < FUSE_OPCODE_END && operations[in->opcode].name)
		op = &operations[in->opcode];
	/* a longer op struct spilled into the payload buffer: fetch it back */
	if (in->opcode != FUSE_WRITE && len > REQ_HEAD && !q->from_ring)
		memcpy((char *)&q->req + REQ_HEAD, q->data,
		       min_u64(len, sizeof(q->req)) - REQ_HEAD);
	oplen = len - sizeof(*in);

	q->iov[1].iov_base = &q->reply;
	if (!op || !op->handle)
		r = -ENOSYS;
	else if (oplen < op->in_size)
		r = -EINVAL;
	else if (!e->initialized && in->opcode != FUSE_INIT)
		r = -EIO;
	else
		r = op->handle(e, q, oplen);

	if (e->debug)
		fprintf(stderr, "fuseexport: %s #%llu (%zu bytes): %d%s%s\n",
			op ? op->name : "unknown opcode",
			(unsigned long long)in->unique, len, r,
			r < 0 ? " " : "", r < 0 ? strerror(-r) : "");
	if (atomic_load(&e->halted))
		return -EPROTO;
	if (op && op->no_reply)
		return 0;
	q->out.unique = in->unique;
	q->out.error = r < 0 ? r : 0;
	q->out.len = sizeof(q->out) + (r > 0 ? r : 0);
	q->iov[0].iov_base = &q->out;
	q->iov[0].iov_len = sizeof(q->out);
	q->iov[1].iov_len = r > 0 ? r : 0;
	return r > 0 ? 2 : 1;
}

/* After a reply went out, or could not: let a shrink of the source go on */
static void reply_done(struct export *e, struct queue *q)
{
	if (q->map_locked) {
		q->map_locked = false;
		pthread_rwlock_unlock(&e->map_lock);
	}
}

/* Tell the parent that waits in the foreground that the export is live,
 * and let go of its terminal */
static void tell_ready(struct export *e)
{
	int fd = atomic_exchange(&e->ready_fd, -1), null;

	if (fd < 0)
		return;
	null = open("/dev/null", O_RDWR);
	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
		if (null > 2)
			close(null);
	}
	if (write(fd, "", 1) < 0) {
		/* the parent is gone: nobody is left to tell */
	}
	close(fd);
}

/* The number of possible CPUs, one past the highest that
 * /sys/devices/system/cpu/possible lists ("0-3,5"), or 0 */
static unsigned possible_cpus(void)
{
	FILE *f = fopen("/sys/devices/system/cpu/possible", "re");
	unsigned n = 0, v;
	int c = ',';

	while (f && (c == ',' || c == '-') && fscanf(f, "%u", &v) == 1) {
		n = v + 1 > n ? v + 1 : n;
		c = fgetc(f);
	}
	if (f)
		fclose(f);
	return n;
}

/* Set up a ring: io_uring_setup with 128-byte SQEs, its three maps, and
 * the entries' payload buffers. Returns 0 or -errno. */
static int ring_setup(struct ring *r)
{
	struct io_uring_params p = { .flags = IORING_SETUP_SQE128 };
	size_t sq_size, cq_size;
	char *sq, *cq;
	int i;

	r->fd = syscall(__NR_io_uring_setup, RING_DEPTH, &p);
	if (r->fd < 0)
		return -errno;
	sq_size = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
	cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	if (p.features & IORING_FEAT_SINGLE_MMAP)
		sq_size = cq_size = sq_size > cq_size ? sq_size : cq_size;
	sq = mmap(NULL, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
		  r->fd, IORING_OFF_SQ_RING);
	cq = p.features & IORING_FEAT_SINGLE_MMAP ? sq :
	     mmap(NULL, cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
		  r->fd, IORING_OFF_CQ_RING);
	r->sqes = mmap(NULL, p.sq_entries * sizeof(*r->sqes), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED)
		return -errno;
	r->sq_tail = (uint32_t *)(sq + p.sq_off.tail);
	r->sq_mask = (uint32_t *)(sq + p.sq_off.ring_mask);
	r->sq_array = (uint32_t *)(sq + p.sq_off.array);
	r->cq_head = (uint32_t *)(cq + p.cq_off.head);
	r->cq_tail = (uint32_t *)(cq + p.cq_off.tail);
	r->cq_mask = (uint32_t *)(cq + p.cq_off.ring_mask);
	r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
	for (i = 0; i < RING_DEPTH; i++) {
		struct ring_entry *ent = &r->entry[i];
		ent->payload = malloc(DATA_SIZE);
		if (!ent->payload)
			return -ENOMEM;
		ent->iov[0] = (struct iovec){ &ent->header, sizeof(ent->header) };
		ent->iov[1] = (struct iovec){ ent->payload, DATA_SIZE };
	}
	r->q.e = r->e;
	r->q.fd = -1;
	r->q.from_ring = true;
	return 0;
}

/* Queue a FUSE command for an entry: REGISTER it, or COMMIT its reply and
 * FETCH the next request */
static void ring_command(struct ring *r, struct ring_entry *ent, uint32_t op)
{
	uint32_t index = (*r->sq_tail + r->pending++) & *r->sq_mask;
	struct io_uring_sqe128 *sqe = &r->sqes[index];
	struct fuse_uring_cmd_req *req = (struct fuse_uring_cmd_req *)sqe->cmd;

	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = r->e->fuse_fd;
	sqe->cmd_op = op;
	sqe->user_data = (uintptr_t)ent;
	if (op == FUSE_IO_URING_CMD_REGISTER) {
		sqe->addr = (uintptr_t)ent->iov;
		sqe->len = 2;
	}
	req->qid = r->qid;
	req->commit_id = ent->header.ring_ent_in_out.commit_id;
	r->sq_array[index] = index;
}

/* Serve the request the kernel put in an entry, and queue its reply.
 * Returns 0, or -EPROTO if the export halts. */
static int ring_serve(struct ring *r, struct ring_entry *ent)
{
	struct export *e = r->e;
	struct queue *q = &r->q;
	struct fuse_in_header *in = (struct fuse_in_header *)ent->header.in_out;
	struct fuse_out_header *out = (struct fuse_out_header *)ent->header.in_out;
	uint32_t payload = ent->header.ring_ent_in_out.payload_sz;
	size_t n = 0;
	int k;

	if (payload > DATA_SIZE || in->len < sizeof(*in) ||
	    in->len > sizeof(*in) + sizeof(ent->header.op_in) + payload)
		return halt(e, "halting: an io_uring request of %u bytes with a "
			    "payload of %u", in->len, payload);
	memcpy(&q->req, in, sizeof(*in));
	memcpy((char *)&q->req + sizeof(*in), ent->header.op_in,
	       sizeof(q->req) - sizeof(*in));
	/* a WRITE's data is the payload, all of it and no more */
	if (in->opcode == FUSE_WRITE && q->req.write.size != payload)
		return halt(e, "halting: an io_uring WRITE of %u bytes with a "
			    "payload of %u", q->req.write.size, payload);
	q->data = ent->payload;
	k = serve(e, q, in->len);
	if (k < 0)
		return k;
	if (k == 2) {
		n = q->iov[1].iov_len;
		if (q->iov[1].iov_base != ent->payload)
			memcpy(ent->payload, q->iov[1].iov_base, n);
	} else if (k == 0) {		/* no reply wanted: an empty one */
		q->out = (struct fuse_out_header){ sizeof(q->out), 0, in->unique };
	}
	*out = q->out;
	ent->header.ring_ent_in_out.payload_sz = n;
	ring_command(r, ent, FUSE_IO_URING_CMD_COMMIT_AND_FETCH);
	return 0;
}

/* A ring's thread, pinned to its CPU: register every entry, then serve
 * what the kernel puts in them until it ends them all (-ENOTCONN at
 * unmount) or the export halts */
static void *ring_loop(void *arg)
{
	struct ring *r = arg;
	struct export *e = r->e;
	unsigned live = RING_DEPTH, i;
	cpu_set_t cpu;

	CPU_ZERO(&cpu);
	CPU_SET(r->qid, &cpu);
	pthread_setaffinity_np(pthread_self(), sizeof(cpu), &cpu);
	for (i = 0; i < RING_DEPTH; i++)
		ring_command(r, &r->entry[i], FUSE_IO_URING_CMD_REGISTER);
	while (live && !atomic_load(&e->halted)) {
		uint32_t head = *r->cq_head, tail;

		__atomic_store_n(r->sq_tail, *r->sq_tail + r->pending, __ATOMIC_RELEASE);
		if (syscall(__NR_io_uring_enter, r->fd, r->pending, 1,
			    IORING_ENTER_GETEVENTS, NULL, 0) < 0 && errno != EINTR) {
			halt(e, "halting: io_uring_enter: %s", strerror(errno));
			break;
		}
		r->pending = 0;
		tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
		for (; head != tail; head++) {
			struct io_uring_cqe *cqe = &r->cqes[head & *r->cq_mask];
			struct ring_entry *ent = (struct ring_entry *)(uintptr_t)cqe->user_data;

			if (cqe->res == 0 && ring_serve(r, ent) == 0)
				continue;
			live--;		/* -ENOTCONN: the export is gone */
			if (cqe->res && cqe->res != -ENOTCONN &&
			    cqe->res != -ECONNABORTED && e->io_uring == ON)
				halt(e, "--io-uring=on: the kernel refused a queue: %s",
				     strerror(-cqe->res));
		}
		__atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
	}
	if (atomic_load(&e->halted))
		kill(getpid(), SIGUSR1);	/* wake main() */
	return NULL;
}

/* Start a ring per possible CPU; the kernel takes requests through them
 * once every queue has registered. Returns 0 or -errno. */
static int start_rings(struct export *e)
{
	unsigned i;
	int r;

	e->nrings = possible_cpus();
	e->rings = calloc(e->nrings, sizeof(*e->rings));
	if (!e->nrings || !e->rings)
		return -ENOMEM;
	for (i = 0; i < e->nrings; i++) {
		e->rings[i].e = e;
		e->rings[i].qid = i;
		if ((r = ring_setup(&e->rings[i])) < 0)
			return r;
		if ((r = -pthread_create(&e->rings[i].thread, NULL, ring_loop,
					 &e->rings[i])) < 0)
			return r;
	}
	return 0;
}

/* After the INIT reply: set up passthrough, say which path the export
 * takes, and tell the parent it is live. Returns 0, or -EPROTO to halt. */
static int init_done(struct export *e)
{
	int id = e->no_passthrough ? 0 : open_backing(e), r;

	if (id < 0 && e->passthrough == ON)
		return halt(e, "--passthrough=on: the kernel refused the source "
			    "as backing file: %s", strerror(-id));
	if (id < 0)
		e->no_passthrough = "the kernel refused the source as backing file";
	if (e->debug && e->no_passthrough)
		fprintf(stderr, "fuseexport: passthrough off (%s): every read "
			"and write goes through /dev/fuse\n", e->no_passthrough);
	else if (e->debug)
		fprintf(stderr, "fuseexport: passthrough on: %s go straight to "
			"the source\n", e->writable ? "reads, writes, splice "
			"and mmap" : "reads, splice and mmap");
	if (e->uring && (r = start_rings(e)) < 0)
		return halt(e, "halting: starting the io_uring queues: %s",
			    strerror(-r));
	if (e->debug)
		fprintf(stderr, "fuseexport: transport: %s\n", e->uring ?
			"FUSE over io_uring, a ring per CPU" : "read(2) and "
			"write(2) on /dev/fuse, a thread per queue");
	tell_ready(e);
	return 0;
}

/* A queue: read a request, serve it, reply on the same fd, until the
 * kernel says the export is gone (ENODEV) or it halts */
static void *queue_loop(void *arg)
{
	struct queue *q = arg;
	struct export *e = q->e;
	struct iovec in[2] = { { &q->req, REQ_HEAD }, { q->data, DATA_SIZE } };

	while (!atomic_load(&e->halted)) {
		ssize_t n = readv(q->fd, in, 2);
		int k, err;
		bool sent;

		if (n < 0) {
			if (errno == EINTR || errno == ENOENT || errno == EAGAIN)
				continue;	/* an interrupted request */
			if (errno != ENODEV)
				halt(e, "halting: reading /dev/fuse: %s",
				     strerror(errno));
			break;
		}
		k = serve(e, q, n);
		sent = k <= 0 || writev(q->fd, q->iov, k) >= 0;
		err = errno;
		reply_done(e, q);
		if (k < 0)
			break;
		if (sent) {
			if (q->req.in.opcode == FUSE_INIT && init_done(e) < 0)
				break;
		} else if (err == ENODEV) {
			break;
		} else if (err != ENOENT &&	/* ENOENT: the request was aborted */
			   err != EFAULT) {	/* a mapped page failed: EIO sent */
			fprintf(stderr, "fuseexport: reply to request #%llu: %s\n",
				(unsigned long long)q->req.in.unique,
				strerror(err));
		}
	}
	if (atomic_fetch_sub(&e->running, 1) == 1 || atomic_load(&e->halted))
		kill(getpid(), SIGUSR1);	/* wake main() */
	return NULL;
}

/* Parse a byte count with an optional K, M, G or T suffix; exit if bad */
static uint64_t parse_number(const char *what, const char *s, uint64_t min,
			     uint64_t max)
{
	static const char suffixes[] = "KMGT";
	const char *p;
	char *end;
	unsigned long long v;
	int shift = 0;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (*end && (p = strchr(suffixes, *end & ~0x20)) && !end[1])
		shift = 10 * (p - suffixes + 1), end++;
	if (errno || end == s || *end || *s == '-' ||
	    (shift && v > (max >> shift)) || (v << shift) > max ||
	    (v << shift) < min)
		die("%s: '%s' is not a number from %llu to %llu", what, s,
		    (unsigned long long)min, (unsigned long long)max);
	return v << shift;
}

static int parse_mode(const char *what, const char *s)
{
	if (!strcmp(s, "auto"))
		return AUTO;
	if (!strcmp(s, "on"))
		return ON;
	if (!strcmp(s, "off"))
		return OFF;
	die("%s: '%s' is not auto, on or off", what, s);
	return OFF;
}

/* Take a mount-style option list (-o, and mount(8)'s helper calls) */
static void parse_mount_options(struct export *e, char *list)
{
	static const char *const ignored[] = {
		"defaults", "nofail", "_netdev", "dev", "nodev", "suid", "nosuid",
		"exec", "noexec", "auto", "noauto", "user", "nouser", "users",
		"owner", "group", "atime", "noatime", "relatime", NULL
	};
	char *opt, *value, *next;
	int i;

	for (opt = list; opt; opt = next) {
		next = strchr(opt, ',');
		if (next)
			*next++ = 0;
		value = strchr(opt, '=');
		if (value)
			*value++ = 0;
		for (i = 0; ignored[i] && strcmp(opt, ignored[i]); i++)
			;
		if (!*opt || ignored[i] || !strncmp(opt, "x-", 2))
			continue;	/* generic, for mount(8) or none */
		if (!value && !strcmp(opt, "ro"))
			e->writable = e->growable = false;
		else if (!value && !strcmp(opt, "rw"))
			e->writable = true;
		else if (!value && !strcmp(opt, "growable"))
			e->writable = e->growable = true;
		else if (!value && !strcmp(opt, "allow_other"))
			e->allow_other = ON;
		else if (value && !strcmp(opt, "queues"))
			e->queues = parse_number("-o queues", value, 1, MAX_QUEUES),
			e->queues_given = true;
		else if (value && !strcmp(opt, "passthrough"))
			e->passthrough = parse_mode("-o passthrough", value);
		else if (value && !strcmp(opt, "io_uring"))
			e->io_uring = parse_mode("-o io_uring", value);
		else if (value && !strcmp(opt, "offset"))
			e->offset = parse_number("-o offset", value, 0, INT64_MAX);
		else if (value && !strcmp(opt, "size"))
			e->window = parse_number("-o size", value, 1, INT64_MAX);
		else
			die("-o %s%s%s: unknown option (see --help)", opt,
			    value ? "=" : "", value ? value : "");
	}
}

/* -h, -V: print text on stdout and exit 0, or 1 if it could not be written */
static _Noreturn void print_and_exit(const char *text)
{
	if (fputs(text, stdout) == EOF || fflush(stdout) == EOF)
		die("stdout:");
	exit(0);
}

/* Called as mount.fuseexport or mount.fuse.fuseexport, by mount(8)? */
static bool mount_helper(const char *argv0)
{
	const char *name = strrchr(argv0, '/');

	name = name ? name + 1 : argv0;
	return !strcmp(name, "mount.fuseexport") ||
	       !strcmp(name, "mount.fuse.fuseexport");
}

static void parse_options(struct export *e, int argc, char *argv[])
{
	enum { OPT_ALLOW_OTHER = 256, OPT_PASSTHROUGH, OPT_IO_URING, OPT_OFFSET,
	       OPT_SIZE };
	static const struct option longopts[] = {
		{ "writable", no_argument, NULL, 'w' },
		{ "growable", no_argument, NULL, 'g' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "debug", no_argument, NULL, 'd' },
		{ "queues", required_argument, NULL, 'q' },
		{ "allow-other", required_argument, NULL, OPT_ALLOW_OTHER },
		{ "passthrough", required_argument, NULL, OPT_PASSTHROUGH },
		{ "io-uring", required_argument, NULL, OPT_IO_URING },
		{ "offset", required_argument, NULL, OPT_OFFSET },
		{ "size", required_argument, NULL, OPT_SIZE },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 }
	};
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	/* mount(8) calls helpers as SOURCE MOUNTPOINT [-sfnv] [-N NS]
	 * [-o OPTS] [-t TYPE]: -f there means "fake", the others are ours */
	bool helper = mount_helper(argv[0]), fake = false;
	int c;

	e->queues = cpus < 1 ? 1 : cpus > MAX_QUEUES ? MAX_QUEUES : cpus;
	e->allow_other = AUTO;
	e->passthrough = AUTO;
	e->io_uring = OFF;	/* bench.sh: read(2) queues win on 4 KiB I/O */
	opterr = 0;
	optind = 0;		/* a fresh scan, even for a harness's second export */
	while ((c = getopt_long(argc, argv, helper ? ":o:sfnvN:t:" : ":wgfdq:o:hV",
				longopts, NULL)) != -1) {
		if (helper && c == 'f')
			c = 'F';
		switch (c) {
		case 'o':
			parse_mount_options(e, optarg);
			break;
		case 'F':
			fake = true;
			break;
		case 's': case 'n': case 'v': case 'N': case 't':
			break;		/* sloppy, no mtab, verbose, namespace, type */
		case 'g':
			e->growable = true;
			/* fall through */
		case 'w':
			e->writable = true;
			break;
		case 'd':
			e->debug = true;
			/* fall through */
		case 'f':
			e->foreground = true;
			break;
		case 'q':
			e->queues = parse_number("--queues", optarg, 1, MAX_QUEUES);
			e->queues_given = true;
			break;
		case OPT_ALLOW_OTHER:
			e->allow_other = parse_mode("--allow-other", optarg);
			break;
		case OPT_PASSTHROUGH:
			e->passthrough = parse_mode("--passthrough", optarg);
			break;
		case OPT_IO_URING:
			e->io_uring = parse_mode("--io-uring", optarg);
			break;
		case OPT_OFFSET:
			e->offset = parse_number("--offset", optarg, 0, INT64_MAX);
			break;
		case OPT_SIZE:
			e->window = parse_number("--size", optarg, 1, INT64_MAX);
			break;
		case 'h':
			print_and_exit(usage_text);
		case 'V':
			print_and_exit("fuseexport " VERSION "\n");
		case ':':
			die("%s: needs a value", argv[optind - 1]);
			break;
		default:
			die("%s: unknown option (see --help)", argv[optind - 1]);
		}
	}
	if (argc - optind != 2)
		die("%s: expected SOURCE and MOUNTPOINT (see --help)",
		    argc - optind < 2 ? "too few arguments" : "too many arguments");
	e->source_path = argv[optind];
	e->mountpoint = argv[optind + 1];
	if (fake)
		exit(0);
}

/* Open and lock the source, and take the exported file's attributes */
static void open_source(struct export *e)
{
	const char *path = e->source_path;
	struct stat st;
	uint64_t source_size;
	int ro = 0;

	/* The path's type only says whether to ask for O_EXCL (a block device
	 * is then refused while mounted); what was opened is what counts, and
	 * O_NONBLOCK keeps a FIFO swapped in meanwhile from hanging the open */
	if (stat(path, &st) < 0)
		die("%s:", path);
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		die("%s: not a regular file or block device", path);
	e->is_blockdev = S_ISBLK(st.st_mode);
	e->source_fd = open(path, (e->writable ? O_RDWR : O_RDONLY) | O_CLOEXEC |
			    O_NOCTTY | O_NONBLOCK |
			    (e->writable && e->is_blockdev ? O_EXCL : 0));
	if (e->source_fd < 0)
		die("%s:", path);
	if (fstat(e->source_fd, &st) < 0)
		die("%s:", path);
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		die("%s: not a regular file or block device", path);
	if (e->is_blockdev != S_ISBLK(st.st_mode))
		die("%s: changed while it was opened", path);
	if (fcntl(e->source_fd, F_SETFL, 0) < 0)
		die("%s:", path);
	if (e->growable && e->is_blockdev)
		die("%s: --growable needs a regular file, not a block device", path);
	if (e->growable && (e->offset || e->window))
		die("%s: --growable does not go with --offset or --size", path);
	if (e->writable && e->is_blockdev && ioctl(e->source_fd, BLKROGET, &ro) == 0 && ro)
		die("%s: a read-only block device cannot be exported writable", path);
	if (flock(e->source_fd, (e->writable ? LOCK_EX : LOCK_SH) | LOCK_NB) < 0)
		die(errno == EWOULDBLOCK ? "%s: in use by another export "
		    "(a writer excludes everyone else)" : "%s: lock:", path);

	source_size = st.st_size;
	if (e->is_blockdev && ioctl(e->source_fd, BLKGETSIZE64, &source_size) < 0)
		die("%s: BLKGETSIZE64:", path);
	if (e->offset > source_size ||
	    (e->window && e->window > source_size - e->offset))
		die("%s: the window %llu+%llu lies past its end (%llu bytes)",
		    path, (unsigned long long)e->offset,
		    (unsigned long long)e->window,
		    (unsigned long long)source_size);
	atomic_store(&e->size, e->window ? e->window : source_size - e->offset);

	/* what keeps passthrough off before the kernel is even asked */
	if (e->passthrough == OFF)
		e->no_passthrough = "--passthrough=off";
	else if (e->is_blockdev)
		e->no_passthrough = "the kernel passes through to regular files only";
	else if (e->offset || e->window)
		e->no_passthrough = "a window's offsets are not the source's";
	else if (e->writable && !e->growable)
		e->no_passthrough = "a fixed-size export's writes must come here "
				    "(passed through, they could grow the source)";
	else if (geteuid() != 0)
		e->no_passthrough = "registering a backing file needs root";
	if (e->passthrough == ON && e->no_passthrough)
		die("--passthrough=on: %s", e->no_passthrough);

	e->mode = e->writable ? 0600 : 0400;
	e->uid = getuid();
	e->gid = getgid();
	e->atime = st.st_atim;
	e->mtime = st.st_mtim;
	e->ctime = st.st_ctim;
	pthread_mutex_init(&e->lock, NULL);
	pthread_rwlock_init(&e->map_lock, NULL);
	e->fuse_fd = -1;
	atomic_store(&e->ready_fd, -1);
}

/* Unescape a path field of /proc/self/mountinfo (\040 and the like) */
static void unescape(char *s)
{
	char *out = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' &&
		    s[2] >= '0' && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
			*out++ = (s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0');
			s += 3;
		} else {
			*out++ = *s;
		}
	}
	*out = 0;
}

/* Is an export of ours already mounted at path? */
static bool exported_at(const char *path)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char line[4096], mnt[4096], type[256];
	bool found = false;

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		const char *dash = strstr(line, " - ");
		if (!dash || sscanf(line, "%*s %*s %*s %*s %4095s", mnt) != 1 ||
		    sscanf(dash + 3, "%255s", type) != 1)
			continue;
		unescape(mnt);
		found = !strcmp(mnt, path) && !strncmp(type, "fuse", 4);
	}
	fclose(f);
	return found;
}

/* MOUNTPOINT: an existing regular file, not already carrying an export */
static void check_mountpoint(struct export *e)
{
	const char *path = e->mountpoint;
	struct stat st;
	char *abs;

	if (stat(path, &st) < 0 && errno == ENOTCONN)
		die("%s: a dead export is mounted here (its server is gone); "
		    "clear it with: umount %s", path, path);
	if (stat(path, &st) < 0)
		die("%s:", path);
	if (!S_ISREG(st.st_mode))
		die("%s: not a regular file (an export is mounted on a file)", path);
	abs = realpath(path, NULL);
	if (!abs)
		die("%s:", path);
	if (exported_at(abs))
		die("%s: already exported (end that export with: umount %s)",
		    path, path);
	e->mountpoint = e->mountpoint_buf = abs;
}

/* The full path of the first of names found on PATH, or NULL */
static char *find_program(const char *const names[])
{
	const char *path = getenv("PATH");
	char *dirs, *dir, *next, *found = NULL;
	int i;

	for (i = 0; names[i] && !found; i++) {
		dirs = strdup(path ? path : "/usr/bin:/bin:/usr/sbin:/sbin");
		for (dir = dirs; dir && !found; dir = next) {
			next = strchr(dir, ':');
			if (next)
				*next++ = 0;
			if (asprintf(&found, "%s/%s", *dir ? dir : ".", names[i]) < 0)
				found = NULL;
			else if (access(found, X_OK) < 0) {
				free(found);
				found = NULL;
			}
		}
		free(dirs);
	}
	return found;
}

static const char *const fusermounts[] = { "fusermount3", "fusermount", NULL };

/* Does /etc/fuse.conf let users mount with allow_other? */
static bool user_allow_other(void)
{
	FILE *f = fopen("/etc/fuse.conf", "re");
	char line[256], word[32];
	bool yes = false;

	while (f && !yes && fgets(line, sizeof(line), f))
		yes = sscanf(line, " %31s", word) == 1 &&
		      !strcmp(word, "user_allow_other");
	if (f)
		fclose(f);
	return yes;
}

/* Append value to buf for fusermount3's option list, a backslash before
 * every comma and backslash, as libfuse does. Returns false if it did
 * not fit. */
static bool append_escaped(char *buf, size_t size, const char *value)
{
	size_t n = strlen(buf);

	for (; *value && n + 2 < size; value++) {
		if (*value == ',' || *value == '\\')
			buf[n++] = '\\';
		buf[n++] = *value;
	}
	buf[n] = 0;
	return !*value;
}

/* Mount without root, as libfuse does: fusermount3 (setuid root) mounts on
 * our behalf and hands back the /dev/fuse fd over a socket named by
 * _FUSE_COMMFD. Exits with fusermount3's own complaint on failure. */
static void mount_by_fusermount(struct export *e)
{
	char opts[4352] = "fsname=", *prog = find_program(fusermounts);
	char env[32], byte, err[512] = "";
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { &byte, 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cmsg;
	struct stat st;
	int sock[2], errpipe[2], status;
	ssize_t n;
	pid_t pid;

	if (stat(e->mountpoint, &st) == 0 && st.st_uid != getuid())
		die("%s: not yours: without root, the mount point must be your "
		    "own file", e->mountpoint);
	if (!prog)
		die("fusermount3: not found on PATH; install fuse3 (Debian: apt-get "
		    "install fuse3), or export as root");
	if (e->allow_other != OFF && !user_allow_other()) {
		if (e->allow_other == ON)
			die("--allow-other=on: without root it needs user_allow_other "
			    "in /etc/fuse.conf");
		e->allow_other = OFF;
	}
	if (!append_escaped(opts, sizeof(opts), e->source_path) ||
	    (n = strlen(opts), (size_t)snprintf(opts + n, sizeof(opts) - n,
			",subtype=fuseexport,default_permissions,max_read=%u%s%s",
			MAX_WRITE, e->allow_other ? ",allow_other" : "",
			e->writable ? "" : ",ro") >= sizeof(opts) - n))
		die("%s: the path is too long for fusermount3's options",
		    e->source_path);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sock) < 0 || pipe(errpipe) < 0)
		die("socketpair:");
	pid = fork();
	if (pid < 0)
		die("fork:");
	if (pid == 0) {
		snprintf(env, sizeof(env), "%d", sock[1]);
		setenv("_FUSE_COMMFD", env, 1);
		dup2(errpipe[1], 2);
		execl(prog, prog, "-o", opts, "--", e->mountpoint, (char *)NULL);
		fprintf(stderr, "%s: %s", prog, strerror(errno));
		_exit(127);
	}
	close(sock[1]);
	close(errpipe[1]);
	while ((n = recvmsg(sock[0], &msg, 0)) < 0 && errno == EINTR)
		;
	cmsg = n > 0 ? CMSG_FIRSTHDR(&msg) : NULL;
	if (cmsg && cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS &&
	    cmsg->cmsg_len == CMSG_LEN(sizeof(int)))
		memcpy(&e->fuse_fd, CMSG_DATA(cmsg), sizeof(int));
	n = read(errpipe[0], err, sizeof(err) - 1);
	err[n > 0 ? n : 0] = 0;
	err[strcspn(err, "\n")] = 0;
	waitpid(pid, &status, 0);
	close(sock[0]);
	close(errpipe[0]);
	if (e->fuse_fd < 0)
		die("%s", *err ? err : "fusermount3 failed to mount");
	mounted_export = e;
	fcntl(e->fuse_fd, F_SETFD, FD_CLOEXEC);
	free(prog);
}

/* Run fusermount3 -u [-z] on the mount point; returns its exit status */
static int fusermount_unmount(struct export *e, bool lazy)
{
	char *prog = find_program(fusermounts);
	int status = -1;
	pid_t pid;

	if (!prog)
		return -1;
	pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 2);
		execl(prog, prog, lazy ? "-uqz" : "-uq", "--", e->mountpoint,
		      (char *)NULL);
		_exit(127);
	}
	if (pid > 0)
		waitpid(pid, &status, 0);
	free(prog);
	return status;
}

/* Mount the export: with mount(2) on a new /dev/fuse fd as root, else
 * through fusermount3 */
static void mount_export(struct export *e)
{
	char opts[256];

	if (geteuid() != 0) {
		mount_by_fusermount(e);
		return;
	}
	e->fuse_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (e->fuse_fd < 0)
		die("/dev/fuse:");
	if (e->allow_other == AUTO)
		e->allow_other = ON;	/* root may always allow others */
	snprintf(opts, sizeof(opts), "fd=%d,rootmode=%o,user_id=%u,group_id=%u,"
		 "default_permissions,max_read=%u%s", e->fuse_fd,
		 S_IFREG | e->mode, e->uid, e->gid, MAX_WRITE,
		 e->allow_other ? ",allow_other" : "");
	/* a read-only export is a read-only mount: chmod, touch: EROFS */
	if (mount(e->source_path, e->mountpoint, "fuse.fuseexport",
		  MS_NOSUID | MS_NODEV | (e->writable ? 0 : MS_RDONLY), opts) < 0)
		die("mount on %s:", e->mountpoint);
	mounted_export = e;
}

/* End the export: unmount, or detach it while files are still open */
static void unmount_export(struct export *e, bool force)
{
	if (geteuid() != 0) {
		if (fusermount_unmount(e, false) != 0)
			fusermount_unmount(e, true);
	} else if (umount2(e->mountpoint, force ? MNT_FORCE : 0) < 0) {
		umount2(e->mountpoint, MNT_DETACH);
	}
}

/* Go to the background: the parent returns only once the export is live
 * (the child answered INIT), or unmounts and fails if the child died */
static void detach(struct export *e)
{
	int fds[2];
	pid_t pid;
	char c;

	if (pipe2(fds, O_CLOEXEC) < 0)
		die("pipe:");
	pid = fork();
	if (pid < 0) {
		unmount_export(e, true);
		die("fork:");
	}
	if (pid > 0) {
		ssize_t n;
		close(fds[1]);
		while ((n = read(fds[0], &c, 1)) < 0 && errno == EINTR)
			;
		if (n == 1)
			exit(0);
		unmount_export(e, true);
		exit(1);		/* the server said why */
	}
	close(fds[0]);
	atomic_store(&e->ready_fd, fds[1]);
	setsid();
	if (chdir("/") < 0) {
		/* stay where we are */
	}
}

/* Start the queues: as many as asked with -q, else as many as /dev/fuse
 * lets us clone (at least the first) */
static void start_queues(struct export *e)
{
	unsigned i;

	e->queue = calloc(e->queues, sizeof(*e->queue));
	if (!e->queue)
		die("queues:");
	atomic_store(&e->running, e->queues);
	for (i = 0; i < e->queues; i++) {
		struct queue *q = &e->queue[i];
		uint32_t session = e->fuse_fd;

		q->e = e;
		q->fd = e->fuse_fd;
		q->data = malloc(DATA_SIZE);
		if (!q->data)
			die("queue buffer:");
		if (i > 0 && ((q->fd = open("/dev/fuse", O_RDWR | O_CLOEXEC)) < 0 ||
			      ioctl(q->fd, FUSE_DEV_IOC_CLONE, &session) < 0)) {
			if (e->queues_given)
				die("cloning /dev/fuse for queue %u:", i);
			if (e->debug)
				fprintf(stderr, "fuseexport: %u queues: cloning "
					"/dev/fuse: %s\n", i, strerror(errno));
			if (q->fd >= 0)
				close(q->fd);
			free(q->data);
			atomic_fetch_sub(&e->running, e->queues - i);
			e->queues = i;
			break;
		}
		errno = pthread_create(&q->thread, NULL, queue_loop, q);
		if (errno)
			die("starting queue %u:", i);
	}
}

/* Serve until the export ends; returns the exit status: 1 if it halted
 * or a flush of the source failed */
static int run_export(struct export *e)
{
	sigset_t set;
	bool unmounted = false;
	unsigned i;
	int sig, r;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	map_source(e, NULL);
	start_queues(e);
	while (atomic_load(&e->running) > 0) {
		if (sigwait(&set, &sig) != 0)
			continue;
		if (atomic_load(&e->halted)) {
			/* Queues may sleep in read(2) for good (without root
			 * a lazy unmount aborts nothing): exiting closes every
			 * /dev/fuse fd, which aborts the connection, so no
			 * client is left waiting on us */
			unmount_export(e, true);
			if (e->writable)
				flush_source(e, false);
			exit(1);
		} else if (sig != SIGUSR1 && !unmounted) {
			if (e->writable)
				flush_source(e, false);	/* failure: told below */
			if (e->backing_id > 0)	/* open files keep their own */
				ioctl(e->fuse_fd, FUSE_DEV_IOC_BACKING_CLOSE,
				      &e->backing_id);
			unmount_export(e, false);
			unmounted = true;
		}
	}
	for (i = 0; i < e->queues; i++)
		pthread_join(e->queue[i].thread, NULL);
	for (i = 0; e->rings && i < e->nrings; i++)
		if (e->rings[i].thread)
			pthread_join(e->rings[i].thread, NULL);
	if (e->writable && (r = flush_source(e, false)) < 0) {
		fprintf(stderr, "fuseexport: %s: a flush of the source failed "
			"(%s): writes since the last good one may be lost\n",
			e->source_path, strerror(-r));
		return 1;
	}
	return atomic_load(&e->halted) ? 1 : 0;
}

struct export *fuseexport_new(int argc, char *argv[])
{
	struct export *e = calloc(1, sizeof(*e));

	if (!e)
		die("out of memory:");
	parse_options(e, argc, argv);
	open_source(e);
	e->queues = 1;
	e->queue = calloc(1, sizeof(*e->queue));
	if (!e->queue || !(e->queue->data = malloc(DATA_SIZE)))
		die("out of memory:");
	e->queue->e = e;
	e->queue->fd = -1;
	e->quiet = true;
	if (e->allow_other == AUTO)
		e->allow_other = ON;
	return e;
}

long fuseexport_request(struct export *e, const void *request, size_t len,
			void *reply, size_t reply_size)
{
	struct queue *q = e->queue;
	size_t head = min_u64(len, REQ_HEAD), done = 0;
	int k, i;

	if (len > REQ_HEAD + DATA_SIZE)
		return -EMSGSIZE;	/* read(2) would have refused it */
	memcpy(&q->req, request, head);
	memcpy(q->data, (const char *)request + head, len - head);
	k = serve(e, q, len);
	for (i = 0; i < k; i++) {
		size_t n = min_u64(q->iov[i].iov_len, reply_size - done);
		memcpy((char *)reply + done, q->iov[i].iov_base, n);
		done += n;
	}
	reply_done(e, q);
	return k < 0 ? k : (long)done;
}

void fuseexport_free(struct export *e)
{
	unsigned i;

	close(e->source_fd);
	for (i = 0; e->queue && i < e->queues; i++)
		free(e->queue[i].data);
	free(e->queue);
	free(e->mountpoint_buf);
	free(e);
}

#ifndef FUSEEXPORT_NO_MAIN
int main(int argc, char *argv[])
{
	struct export *e = calloc(1, sizeof(*e));
	int status;

	if (!e)
		die("out of memory:");
	signal(SIGPIPE, SIG_IGN);	/* a closed stderr or parent: EPIPE */
	parse_options(e, argc, argv);
	check_mountpoint(e);
	open_source(e);
	mount_export(e);
	if (!e->foreground)
		detach(e);
	status = run_export(e);
	fuseexport_free(e);
	return status;
}
#endif
