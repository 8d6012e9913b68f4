/* fuseexport.c - one raw file or block device as one regular file, through FUSE
 *
 * Speaks the kernel's FUSE protocol (include/uapi/linux/fuse.h, 7.9 to 7.45)
 * on /dev/fuse itself, with no libfuse: it mounts with mount(2) (without
 * root, through fusermount3), then serves requests with one thread per
 * queue, each blocking in read(2) on its own /dev/fuse fd, or with a thread
 * per CPU on FUSE over io_uring; reads and writes may bypass it altogether
 * by kernel passthrough. Every request, whichever transport brought it, is
 * one struct request handled by serve(), whose handlers speak only to the
 * top of a stack of sources: the file or block device at the bottom, a
 * window on it, fault rules, a volatile write cache. Modelled on QEMU's
 * FUSE block export (block/export/fuse.c).
 * The usage text below is what -h prints.
 *
 * The file reads top-down: the request and the source stack, the export's
 * state, the file source, the window, the fault layer, the volatile
 * cache, the control FIFO, the handlers, the dispatcher, the
 * read(2) transport, the io_uring transport, options, mounting, main().
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
"      --fault=RULE        fail or delay the requests RULE matches; repeat\n"
"                          for more rules, checked in order. RULE is\n"
"                          key=value,...: op=read|write|flush|trim|zero|any\n"
"                          (joined by +), offset=, length= (the range a\n"
"                          request must touch), error=EIO|ENOSPC|...|none,\n"
"                          delay=250us|20ms|2s, probability=0..1, every=N,\n"
"                          after=N, count=N\n"
"      --seed=N            seed every random choice (default: the clock)\n"
"      --write-cache=volatile      hold writes in memory until a flush\n"
"      --control=PATH      make a FIFO at PATH taking the lines: fault RULE,\n"
"                          clear, crash, crash torn\n"
"  -o OPTS                 the same as a mount option list: ro, rw, growable,\n"
"                          allow_other, queues=N, passthrough=MODE,\n"
"                          io_uring=MODE, offset=, size=, seed=,\n"
"                          write_cache=, control=; generic mount options\n"
"                          are ignored\n"
"  -h, --help              show this help\n"
"  -V, --version           show the version\n";

enum {
	MAX_QUEUES = 64,
	MAX_WRITE = 1 << 20,			/* largest READ or WRITE payload */
	DATA_SIZE = MAX_WRITE + 4096,		/* a request's payload buffer */
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
	ZEROS_SIZE = 1 << 20,			/* the file source's zero pages */
	FH_WRITES = 1,				/* an open's fh: it may write */
};
#define MAP_WHOLE (4ULL << 30)

enum { AUTO = -1, OFF = 0, ON = 1 };

/* A request in flight, whichever transport brought it: the header and op
 * struct, the payload, and the reply as it will be sent (iov) */
struct request {
	struct {
		struct fuse_in_header hdr;
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
	} in;
	char *data;		/* DATA_SIZE bytes: a WRITE's payload, a READ's buffer */
	bool zero_copy;		/* the transport sends iov as it stands, so a
				 * reply may point into the source's mapping */
	bool map_locked;	/* it does: map_lock is held until it is sent */
	struct fuse_out_header out;
	union {
		struct fuse_init_out init;
		struct fuse_attr_out attr;
		struct fuse_open_out open;
		struct fuse_write_out write;
		struct fuse_lseek_out lseek;
		struct fuse_statfs_out statfs;
	} reply;
	struct iovec iov[2];
};

/*
 * The source stack, after nbdkit's filters: every layer is a struct source,
 * the operations below and the layer it stands on (none for the bottom). A
 * layer that has nothing to say about an operation passes it down, with
 * its own offsets turned into the lower one's. Handlers call only the top.
 * What a layer allows is fixed when the stack is built.
 */
struct space {
	uint64_t allocated;	/* bytes the source holds */
	uint64_t free, avail;	/* room to grow, where it can: bytes */
};

struct source {
	struct source *below;
	bool writable, growable;
	bool resizable;		/* truncate and fallocate may change its size */
	int passthrough_fd;	/* a regular file the kernel may pass reads
				 * and writes to at the same offsets, or -1 */

	/* the size in bytes */
	uint64_t (*size)(struct source *s);
	/* up to n bytes at pos into buf: the number read, short only at the
	 * end, or -errno */
	ssize_t (*read)(struct source *s, void *buf, size_t n, uint64_t pos);
	/* n bytes at pos in a shared mapping, for a reply to be sent from,
	 * or NULL: read them instead */
	const char *(*map)(struct source *s, uint64_t pos, uint64_t n);
	/* n bytes of buf at pos: the number written (short only after a
	 * fault the next write meets), or -errno */
	ssize_t (*write)(struct source *s, const void *buf, size_t n, uint64_t pos);
	/* writes so far reach the medium: 0 or -errno */
	int (*flush)(struct source *s, bool datasync);
	/* len bytes at pos read as zeros afterwards, a hole where it can
	 * (punch) or allocated zeros (zero): 0 or -errno */
	int (*punch)(struct source *s, uint64_t pos, uint64_t len);
	int (*zero)(struct source *s, uint64_t pos, uint64_t len);
	/* reserve len bytes at pos, growing the source past its end unless
	 * keep_size: 0 or -errno */
	int (*allocate)(struct source *s, uint64_t pos, uint64_t len, bool keep_size);
	/* SEEK_DATA or SEEK_HOLE from pos: the offset found, or -errno
	 * (-ENXIO: no data there) */
	int64_t (*seek)(struct source *s, uint64_t pos, int whence);
	/* change the size (resizable sources): 0 or -errno */
	int (*resize)(struct source *s, uint64_t size);
	/* what it holds and the room left: 0 or -errno */
	int (*space)(struct source *s, struct space *sp);
	/* let go of this layer and those below */
	void (*close)(struct source *s);
};

/* A queue: a thread reading requests from its own /dev/fuse fd */
struct queue {
	struct export *e;
	int fd;
	pthread_t thread;
	struct request req;
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
	struct request req;	/* the entry being served; req.data: its payload */
	uint32_t *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
	struct io_uring_sqe128 *sqes;
	struct io_uring_cqe *cqes;
	uint32_t pending;			/* SQEs filled, not yet submitted */
	struct ring_entry entry[RING_DEPTH];
};

/* One export: the source stack, what the exported file looks like, the
 * queues. The booleans are decided before the first request is served. */
struct export {
	const char *source_path;
	const char *mountpoint;		/* absolute once checked */
	char *mountpoint_buf;		/* which realpath() allocated */
	struct source *top;		/* the stack the handlers speak to */
	bool writable, growable, foreground, debug;
	bool queues_given;		/* -q: exactly that many, or fail */
	bool quiet;			/* a test harness: halts say nothing */
	int want_allow_other, want_passthrough, want_io_uring; /* AUTO, OFF, ON */
	bool allow_other;		/* decided at mount */
	bool passthrough, uring;	/* decided by INIT, before its reply */
	const char *no_passthrough;	/* why passthrough is off, if it is */
	unsigned queues;
	uint64_t offset;		/* the window's start in the source */
	uint64_t window;		/* its length; 0: to the end */
	struct fault_rule *rules;	/* --fault, in order, until the fault
					 * layer takes them */
	uint64_t seed;			/* --seed, or from the clock */
	bool write_cache;		/* --write-cache=volatile */
	const char *control_path;	/* --control: the FIFO, once made */
	int control_fd, control_spare;	/* its read end, and a write end
					 * kept so a writer's close is no EOF */
	pthread_t control_thread;
	bool control_running;
	struct faults *faults;		/* the layers, if stacked */
	struct cache *cache;

	/* READs sent from the mapping hold map_lock shared until sent; a
	 * shrink holds it exclusive, and while shrinking is set new READs
	 * read instead, so none meets a page that went away */
	pthread_rwlock_t map_lock;
	atomic_bool shrinking;
	atomic_bool flush_failed;	/* a flush of the source failed once */

	pthread_mutex_t lock;		/* resizing, and the fields below */
	uint32_t mode, uid, gid;
	struct timespec atime, mtime, ctime;
	int backing_id;			/* the source as passthrough backing
					 * file: 0 not yet, < 0 refused */

	uint32_t minor;			/* negotiated protocol minor */
	bool initialized;
	uint32_t open_flags;		/* for OPEN replies without passthrough */
	int fuse_fd;
	struct queue *queue;
	struct ring *rings;
	unsigned nrings;
	atomic_int running;		/* queue threads still serving */
	atomic_int ready_fd;		/* tells the waiting parent we're live */
	atomic_bool halted;
};

/* The export once mounted: a setup error after that unmounts it */
static struct export *mounted_export;
static void unmount_export(struct export *e, bool force);
/* The control FIFO once made: a setup error after that removes it */
static const char *control_made;

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
	if (control_made)
		unlink(control_made);
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

/* A byte count with an optional K, M, G or T suffix (powers of 1024) into
 * *v: false if s is not one or it overflows */
static bool scan_number(const char *s, uint64_t *v)
{
	static const char suffixes[] = "KMGT";
	const char *p;
	char *end;
	unsigned long long n;
	int shift = 0;

	errno = 0;
	n = strtoull(s, &end, 10);
	if (*end && (p = strchr(suffixes, *end & ~0x20)) && !end[1])
		shift = 10 * (p - suffixes + 1), end++;
	if (errno || end == s || *end || *s == '-' ||
	    (shift && n > (UINT64_MAX >> shift)))
		return false;
	*v = (uint64_t)n << shift;
	return true;
}

/*
 * The file source: the bottom of every stack, a regular file or a block
 * device, read and written with pread(2) and pwrite(2) at its own offsets.
 */
struct file_source {
	struct source s;
	int fd;
	bool is_blockdev;
	_Atomic uint64_t size;		/* a fixed-size source's, kept */
	const char *zeros;		/* ZEROS_SIZE bytes of the zero page */
	/* a fixed-size source, mapped: READ replies are sent from here
	 * (NULL: no mapping) */
	char *_Atomic map;
	uint64_t map_size;		/* the bytes mapped: the size it had
					 * then (truncate may grow it since) */
	atomic_uint map_reads;		/* READs served from it */
};

static struct file_source *file_of(struct source *s)
{
	return (struct file_source *)s;
}

/* A growable file's size is the file's own, which passthrough writes
 * change without a word to us; a fixed one's changes only here */
static uint64_t file_size(struct source *s)
{
	struct file_source *f = file_of(s);
	struct stat st;

	if (s->growable && fstat(f->fd, &st) == 0)
		return st.st_size;
	return atomic_load(&f->size);
}

static ssize_t file_read(struct source *s, void *buf, size_t n, uint64_t pos)
{
	struct file_source *f = file_of(s);
	size_t done = 0;

	while (done < n) {
		ssize_t r = pread(f->fd, (char *)buf + done, n - done, pos + done);
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

/* Map the source, so READ replies go to the kernel straight from its
 * pages: one copy, not two. The server never touches the mapping itself;
 * a page the source cannot give fails the writev, not the server. With
 * where, map it anew over itself, dropping the page tables READs built up
 * (on every kernel; MADV_DONTNEED frees them only with CONFIG_PT_RECLAIM):
 * the kernel swaps the two under its mmap lock, so a writev in another
 * thread meets one or the other, never a hole. Returns the mapping, or
 * NULL: then READs use pread. */
static char *map_file(struct file_source *f, char *where)
{
	char *m = mmap(where, f->map_size, PROT_READ,
		       MAP_SHARED | (where ? MAP_FIXED : 0), f->fd, 0);

	m = m == MAP_FAILED ? NULL : m;
	atomic_store(&f->map, m);
	return m;
}

static const char *file_map(struct source *s, uint64_t pos, uint64_t n)
{
	struct file_source *f = file_of(s);
	char *map = atomic_load(&f->map);

	if (!map || pos + n > f->map_size)	/* grown since it was mapped */
		return NULL;
	if (f->map_size > MAP_WHOLE &&
	    atomic_fetch_add(&f->map_reads, 1) % MAP_REFRESH == MAP_REFRESH - 1)
		map = map_file(f, map);		/* drops its page tables */
	return map ? map + pos : NULL;
}

/* Raise the kept size to at least end */
static void grow_to(struct file_source *f, uint64_t end)
{
	uint64_t size = atomic_load(&f->size);

	while (size < end && !atomic_compare_exchange_weak(&f->size, &size, end))
		;
}

static ssize_t file_write(struct source *s, const void *buf, size_t n,
			  uint64_t pos)
{
	struct file_source *f = file_of(s);
	size_t done = 0;

	while (done < n) {
		ssize_t r = pwrite(f->fd, (const char *)buf + done, n - done,
				   pos + done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return done ? (ssize_t)done : -errno;
		if (r == 0)
			return done ? (ssize_t)done : -EIO;
		done += r;
	}
	grow_to(f, pos + done);
	return done;
}

static int file_flush(struct source *s, bool datasync)
{
	struct file_source *f = file_of(s);

	return (datasync ? fdatasync(f->fd) : fsync(f->fd)) < 0 ? -errno : 0;
}

/* Zero len bytes at pos by writing them: 0 or -errno */
static int write_zeros(struct file_source *f, uint64_t pos, uint64_t len)
{
	while (len) {
		ssize_t r = file_write(&f->s, f->zeros, min_u64(len, ZEROS_SIZE), pos);
		if (r < 0)
			return r;
		pos += r;
		len -= r;
	}
	return 0;
}

/* Make len bytes at pos read as zeros, leaving a hole (punch) or
 * allocated zeros where the source can: 0 or -errno */
static int zero_range(struct file_source *f, uint64_t pos, uint64_t len,
		      bool punch)
{
	int mode = FALLOC_FL_KEEP_SIZE |
		   (punch ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE);
	int r;

	if (f->is_blockdev) {
		/* a disk takes only whole sectors: zero the ragged ends */
		int sector = 512;
		uint64_t head, tail;

		ioctl(f->fd, BLKSSZGET, &sector);
		head = min_u64(len, (sector - pos % sector) % sector);
		tail = (pos + len) % sector;
		if (head + tail >= len) {
			head = len;
			tail = 0;
		}
		if (head && (r = write_zeros(f, pos, head)) < 0)
			return r;
		if (tail && (r = write_zeros(f, pos + len - tail, tail)) < 0)
			return r;
		pos += head;
		len -= head + tail;
		if (!len)
			return 0;
	}
	if (fallocate(f->fd, mode, pos, len) == 0)
		return 0;
	if (errno != EOPNOTSUPP && errno != EINVAL)
		return -errno;
	/* tmpfs punches holes but has no zero range; a hole reads as zeros */
	if (!punch && !f->is_blockdev &&
	    fallocate(f->fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, pos, len) == 0)
		return 0;
	if (f->is_blockdev) {
		uint64_t range[2] = { pos, len };
		if (ioctl(f->fd, BLKZEROOUT, range) == 0)
			return 0;
	}
	return write_zeros(f, pos, len);
}

static int file_punch(struct source *s, uint64_t pos, uint64_t len)
{
	return zero_range(file_of(s), pos, len, true);
}

static int file_zero(struct source *s, uint64_t pos, uint64_t len)
{
	return zero_range(file_of(s), pos, len, false);
}

static int file_allocate(struct source *s, uint64_t pos, uint64_t len,
			 bool keep_size)
{
	struct file_source *f = file_of(s);

	if (f->is_blockdev)
		return 0;		/* a disk's space is all there */
	if (fallocate(f->fd, keep_size ? FALLOC_FL_KEEP_SIZE : 0, pos, len) < 0)
		return -errno;
	if (!keep_size)
		grow_to(f, pos + len);
	return 0;
}

static int64_t file_seek(struct source *s, uint64_t pos, int whence)
{
	off_t r = lseek(file_of(s)->fd, pos, whence);

	return r < 0 ? -errno : r;
}

static int file_resize(struct source *s, uint64_t size)
{
	struct file_source *f = file_of(s);

	if (ftruncate(f->fd, size) < 0)
		return -errno;
	atomic_store(&f->size, size);
	return 0;
}

static int file_space(struct source *s, struct space *sp)
{
	struct file_source *f = file_of(s);
	struct statfs sfs;
	struct stat st;

	memset(sp, 0, sizeof(*sp));
	if (f->is_blockdev) {
		sp->allocated = file_size(s);
		return 0;
	}
	if (fstat(f->fd, &st) < 0)
		return -errno;
	sp->allocated = (uint64_t)st.st_blocks * 512;
	if (s->growable && fstatfs(f->fd, &sfs) == 0) {
		sp->free = (uint64_t)sfs.f_bfree * sfs.f_bsize;
		sp->avail = (uint64_t)sfs.f_bavail * sfs.f_bsize;
	}
	return 0;
}

static void file_close(struct source *s)
{
	struct file_source *f = file_of(s);
	char *map = atomic_load(&f->map);

	if (map)
		munmap(map, f->map_size);
	munmap((void *)f->zeros, ZEROS_SIZE);
	close(f->fd);
	free(f);
}

/* Open and lock path as the bottom of a stack. The path's type only says
 * whether to ask for O_EXCL (a block device is then refused while
 * mounted); what was opened is what counts, and O_NONBLOCK keeps a FIFO
 * swapped in meanwhile from hanging the open. Exits on failure. */
static struct source *file_open(const char *path, bool writable, bool growable)
{
	struct file_source *f = calloc(1, sizeof(*f));
	struct stat st;
	uint64_t size;
	int ro = 0;
	void *zeros;

	if (!f)
		die("out of memory:");
	if (stat(path, &st) < 0)
		die("%s:", path);
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		die("%s: not a regular file or block device", path);
	f->is_blockdev = S_ISBLK(st.st_mode);
	f->fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOCTTY |
		     O_NONBLOCK | (writable && f->is_blockdev ? O_EXCL : 0));
	if (f->fd < 0)
		die("%s:", path);
	if (fstat(f->fd, &st) < 0)
		die("%s:", path);
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		die("%s: not a regular file or block device", path);
	if (f->is_blockdev != S_ISBLK(st.st_mode))
		die("%s: changed while it was opened", path);
	if (fcntl(f->fd, F_SETFL, 0) < 0)
		die("%s:", path);
	if (growable && f->is_blockdev)
		die("%s: --growable needs a regular file, not a block device", path);
	if (writable && f->is_blockdev && ioctl(f->fd, BLKROGET, &ro) == 0 && ro)
		die("%s: a read-only block device cannot be exported writable", path);
	if (flock(f->fd, (writable ? LOCK_EX : LOCK_SH) | LOCK_NB) < 0)
		die(errno == EWOULDBLOCK ? "%s: in use by another export "
		    "(a writer excludes everyone else)" : "%s: lock:", path);
	size = st.st_size;
	if (f->is_blockdev && ioctl(f->fd, BLKGETSIZE64, &size) < 0)
		die("%s: BLKGETSIZE64:", path);
	atomic_store(&f->size, size);
	/* the zero page, mapped over and over: zeros to write cost nothing */
	zeros = mmap(NULL, ZEROS_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (zeros == MAP_FAILED)
		die("out of memory:");
	f->zeros = zeros;
	f->map_size = size;
	if (!growable && size && size <= SIZE_MAX)
		map_file(f, NULL);

	f->s = (struct source){
		.writable = writable, .growable = growable,
		.resizable = !f->is_blockdev,
		.passthrough_fd = f->is_blockdev ? -1 : f->fd,
		.size = file_size, .read = file_read, .map = file_map,
		.write = file_write, .flush = file_flush, .punch = file_punch,
		.zero = file_zero, .allocate = file_allocate, .seek = file_seek,
		.resize = file_resize, .space = file_space, .close = file_close,
	};
	return &f->s;
}

/*
 * The window (--offset, --size): a fixed-size range of the layer below,
 * the only place that knows its offset. Nothing outside it is ever read or
 * written, whatever a request asks.
 */
struct window {
	struct source s;
	uint64_t offset, size;
};

static struct window *window_of(struct source *s)
{
	return (struct window *)s;
}

static uint64_t window_size(struct source *s)
{
	return window_of(s)->size;
}

/* The part of n bytes at pos that lies inside the window */
static uint64_t inside(struct window *w, uint64_t pos, uint64_t n)
{
	return pos < w->size ? min_u64(n, w->size - pos) : 0;
}

static ssize_t window_read(struct source *s, void *buf, size_t n, uint64_t pos)
{
	struct window *w = window_of(s);

	return s->below->read(s->below, buf, inside(w, pos, n), w->offset + pos);
}

static const char *window_map(struct source *s, uint64_t pos, uint64_t n)
{
	struct window *w = window_of(s);

	if (inside(w, pos, n) < n)
		return NULL;
	return s->below->map(s->below, w->offset + pos, n);
}

static ssize_t window_write(struct source *s, const void *buf, size_t n,
			    uint64_t pos)
{
	struct window *w = window_of(s);

	if (n && !inside(w, pos, n))
		return -ENOSPC;
	return s->below->write(s->below, buf, inside(w, pos, n), w->offset + pos);
}

static int window_flush(struct source *s, bool datasync)
{
	return s->below->flush(s->below, datasync);
}

static int window_punch(struct source *s, uint64_t pos, uint64_t len)
{
	struct window *w = window_of(s);

	len = inside(w, pos, len);
	return len ? s->below->punch(s->below, w->offset + pos, len) : 0;
}

static int window_zero(struct source *s, uint64_t pos, uint64_t len)
{
	struct window *w = window_of(s);

	len = inside(w, pos, len);
	return len ? s->below->zero(s->below, w->offset + pos, len) : 0;
}

/* the space is reserved; never a byte past the window's end */
static int window_allocate(struct source *s, uint64_t pos, uint64_t len,
			   bool keep_size)
{
	struct window *w = window_of(s);

	if (!keep_size && inside(w, pos, len) < len)
		return -ENOSPC;
	len = inside(w, pos, len);
	return len ? s->below->allocate(s->below, w->offset + pos, len, true) : 0;
}

static int64_t window_seek(struct source *s, uint64_t pos, int whence)
{
	struct window *w = window_of(s);
	int64_t r = s->below->seek(s->below, w->offset + pos, whence);

	if (r < 0)
		return r;
	r = min_u64(r - w->offset, w->size);
	if (whence == SEEK_DATA && (uint64_t)r >= w->size)
		return -ENXIO;		/* the data lies past the window */
	return r;
}

static int window_resize(struct source *s, uint64_t size)
{
	(void)s, (void)size;
	return -EINVAL;			/* a window keeps its size */
}

static int window_space(struct source *s, struct space *sp)
{
	int r = s->below->space(s->below, sp);

	sp->allocated = min_u64(sp->allocated, window_of(s)->size);
	sp->free = sp->avail = 0;	/* it cannot grow */
	return r;
}

static void window_close(struct source *s)
{
	s->below->close(s->below);
	free(s);
}

/* Stand a window of size bytes at offset on below (size 0: to its end).
 * Exits if it does not lie inside. */
static struct source *window_open(struct source *below, uint64_t offset,
				  uint64_t size, const char *path)
{
	struct window *w = calloc(1, sizeof(*w));
	uint64_t below_size = below->size(below);

	if (!w)
		die("out of memory:");
	if (below->growable)
		die("%s: --growable does not go with --offset or --size", path);
	if (offset > below_size || (size && size > below_size - offset))
		die("%s: the window %llu+%llu lies past its end (%llu bytes)",
		    path, (unsigned long long)offset, (unsigned long long)size,
		    (unsigned long long)below_size);
	w->offset = offset;
	w->size = size ? size : below_size - offset;
	w->s = (struct source){
		.below = below, .writable = below->writable,
		.passthrough_fd = -1,
		.size = window_size, .read = window_read, .map = window_map,
		.write = window_write, .flush = window_flush,
		.punch = window_punch, .zero = window_zero,
		.allocate = window_allocate, .seek = window_seek,
		.resize = window_resize, .space = window_space,
		.close = window_close,
	};
	return &w->s;
}

/*
 * The fault layer (--fault, --control): rules that fail or delay the
 * requests they match, checked in order, the first to fire answering. A
 * rule that fails a request answers it alone: nothing reaches the layer
 * below, so a failed write changes nothing. After a crash (--control) every
 * request fails with EIO. Random choices come from one seeded generator,
 * so one seed gives the same failures for the same sequence of requests.
 */
enum { FAULT_READ = 1, FAULT_WRITE = 2, FAULT_FLUSH = 4, FAULT_TRIM = 8,
       FAULT_ZERO = 16, FAULT_ANY = 31 };
static const char *const fault_op_names[] = { "read", "write", "flush", "trim", "zero" };

struct fault_rule {
	struct fault_rule *next;
	char *text;			/* as given, for -d */
	unsigned number;		/* counted from 1 in the order given */
	unsigned ops;			/* FAULT_ bits */
	uint64_t offset, end;		/* the range a request must touch */
	int error;			/* 0: none, only the delay; EIO
					 * unless given or there is a delay */
	bool error_given;
	uint64_t delay_us;
	double probability;
	uint64_t every, after, count;	/* 0: no such condition */
	uint64_t matched, fired;	/* under the layer's lock */
};

struct faults {
	struct source s;
	pthread_mutex_t lock;		/* the rules, their counters, random */
	struct fault_rule *rules;
	unsigned numbered;		/* rules ever added */
	uint64_t random;		/* splitmix64's state */
	bool debug;
	atomic_bool crashed;
};

static const struct { const char *name; int error; } errno_names[] = {
	{ "EIO", EIO }, { "ENOSPC", ENOSPC }, { "EROFS", EROFS },
	{ "EINVAL", EINVAL }, { "EPERM", EPERM }, { "EACCES", EACCES },
	{ "ENOMEM", ENOMEM }, { "ETIMEDOUT", ETIMEDOUT }, { "EAGAIN", EAGAIN },
	{ "EDQUOT", EDQUOT }, { "EFBIG", EFBIG }, { "ENODEV", ENODEV },
	{ "ENXIO", ENXIO }, { "EBUSY", EBUSY }, { "EBADMSG", EBADMSG },
	{ "EOPNOTSUPP", EOPNOTSUPP }, { "ENOLINK", ENOLINK },
	/* not ENOSYS: the kernel would stop sending that opcode for good */
};
#define N_ERRNO_NAMES (sizeof(errno_names) / sizeof(errno_names[0]))

/* splitmix64: the next number of the sequence that *state stands at */
static uint64_t next_random(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static const char *errno_name(int error)
{
	size_t i;

	for (i = 0; i < N_ERRNO_NAMES; i++)
		if (errno_names[i].error == error)
			return errno_names[i].name;
	return "none";
}

/* A duration such as 250us, 20ms or 2s, in microseconds, into *us: false
 * if s is not one (or over an hour) */
static bool scan_duration(const char *s, uint64_t *us)
{
	static const struct { const char *unit; uint64_t us; } units[] = {
		{ "us", 1 }, { "ms", 1000 }, { "s", 1000000 },
	};
	unsigned long long n;
	char *end;
	size_t i;

	errno = 0;
	n = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-' || n > 3600000000ULL)
		return false;
	for (i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (!strcmp(end, units[i].unit) && n <= 3600000000ULL / units[i].us) {
			*us = n * units[i].us;
			return true;
		}
	return false;
}

/* One key=value of a rule into r. Returns NULL, or what is wrong. */
static const char *rule_item(struct fault_rule *r, const char *key,
			     const char *value)
{
	uint64_t v, length;
	char *end, *ops, *op, *next;
	size_t i;

	if (!strcmp(key, "op")) {
		r->ops = 0;
		ops = strdup(value);
		for (op = ops; op; op = next) {
			next = strchr(op, '+');
			if (next)
				*next++ = 0;
			for (i = 0; i < 5 && strcmp(op, fault_op_names[i]); i++)
				;
			if (i < 5)
				r->ops |= 1 << i;
			else if (!strcmp(op, "any"))
				r->ops |= FAULT_ANY;
			else
				break;
		}
		free(ops);
		return op ? "not read, write, flush, trim, zero or any "
			    "(joined by +)" : NULL;
	} else if (!strcmp(key, "offset") || !strcmp(key, "length")) {
		if (!scan_number(value, &v) || (key[0] == 'l' && !v))
			return key[0] == 'o' ? "not a number of bytes" :
			       "not a number of bytes over 0";
		length = r->end - r->offset;	/* the other one stays */
		if (key[0] == 'o')
			r->offset = v;
		else
			length = v;
		r->end = r->offset + length < r->offset ? UINT64_MAX :
			 r->offset + length;
	} else if (!strcmp(key, "error")) {
		for (i = 0; i < N_ERRNO_NAMES && strcmp(value, errno_names[i].name); i++)
			;
		if (i == N_ERRNO_NAMES && strcmp(value, "none"))
			return "not an errno name (EIO, ENOSPC, EROFS, EINVAL, "
			       "EPERM, EACCES, ENOMEM, ETIMEDOUT, EAGAIN, EDQUOT, EFBIG, "
			       "ENODEV, ENXIO, EBUSY, EBADMSG, EOPNOTSUPP, ENOLINK) "
			       "or none";
		r->error = i < N_ERRNO_NAMES ? errno_names[i].error : 0;
		r->error_given = true;
	} else if (!strcmp(key, "delay")) {
		if (!r->error_given)
			r->error = 0;	/* a slow disk, not a failing one */
		if (!scan_duration(value, &r->delay_us))
			return "not a duration such as 250us, 20ms or 2s "
			       "(at most an hour)";
	} else if (!strcmp(key, "probability")) {
		errno = 0;
		r->probability = strtod(value, &end);
		if (errno || end == value || *end || !(r->probability >= 0) ||
		    r->probability > 1)
			return "not a number from 0 to 1";
	} else if (!strcmp(key, "every") || !strcmp(key, "after") ||
		   !strcmp(key, "count")) {
		if (!scan_number(value, &v) || (key[0] != 'a' && !v))
			return key[0] == 'a' ? "not a count" :
			       "not a count over 0";
		*(key[0] == 'e' ? &r->every : key[0] == 'a' ? &r->after : &r->count) = v;
	} else {
		return "unknown key (op, offset, length, error, delay, probability, "
		       "every, after, count)";
	}
	return NULL;
}

/* Parse RULE, a comma-separated key=value list. Returns the rule, or NULL
 * with the offending item and what is wrong with it in why. */
static struct fault_rule *parse_rule(const char *text, char *why, size_t why_size)
{
	struct fault_rule *r = calloc(1, sizeof(*r));
	char *items = strdup(text), *item, *next, *value;
	const char *wrong = NULL;

	if (!r || !items || !(r->text = strdup(text))) {
		snprintf(why, why_size, "out of memory");
		goto bad;
	}
	*r = (struct fault_rule){ .text = r->text, .ops = FAULT_ANY,
				  .end = UINT64_MAX, .error = EIO,
				  .probability = 1 };
	if (!*text)
		wrong = "an empty rule";
	for (item = items; *text && item && !wrong; item = next) {
		next = strchr(item, ',');
		if (next)
			*next++ = 0;
		value = strchr(item, '=');
		if (value)
			*value++ = 0;
		wrong = value ? rule_item(r, item, value) : "not key=value";
		if (wrong)
			snprintf(why, why_size, "%s%s%s: %s", item, value ? "=" : "",
				 value ? value : "", wrong);
	}
	if (wrong && !*text)
		snprintf(why, why_size, "%s", wrong);
	if (!wrong) {
		free(items);
		return r;
	}
bad:
	free(items);
	if (r)
		free(r->text);
	free(r);
	return NULL;
}

static void free_rules(struct fault_rule *r)
{
	while (r) {
		struct fault_rule *next = r->next;
		free(r->text);
		free(r);
		r = next;
	}
}

static struct faults *faults_of(struct source *s)
{
	return (struct faults *)s;
}

/* Append a rule; it is checked after those added before it */
static void add_rule(struct faults *f, struct fault_rule *r)
{
	struct fault_rule **p;

	pthread_mutex_lock(&f->lock);
	for (p = &f->rules; *p; p = &(*p)->next)
		;
	r->number = ++f->numbered;
	*p = r;
	pthread_mutex_unlock(&f->lock);
}

static void clear_rules(struct faults *f)
{
	struct fault_rule *r;

	pthread_mutex_lock(&f->lock);
	r = f->rules;
	f->rules = NULL;
	pthread_mutex_unlock(&f->lock);
	free_rules(r);
}

/* Count a request (op, len bytes at pos; a flush has no range) against the
 * rules; the first that fires decides: its delay is slept, then its error
 * returned. Returns 0 (go on below) or -errno. */
static int fault_check(struct faults *f, unsigned op, uint64_t pos, uint64_t len)
{
	struct fault_rule *r;
	struct timespec t;
	uint64_t delay = 0, last = pos + (len ? len - 1 : 0);
	int error = 0, i;

	if (atomic_load(&f->crashed))
		return -EIO;
	pthread_mutex_lock(&f->lock);
	for (r = f->rules; r; r = r->next) {
		if (!(r->ops & op) ||
		    (op != FAULT_FLUSH && (last < r->offset || pos >= r->end)))
			continue;
		r->matched++;
		if (r->matched <= r->after ||
		    (r->every && (r->matched - r->after) % r->every) ||
		    (r->count && r->fired >= r->count) ||
		    (r->probability < 1 &&
		     (next_random(&f->random) >> 11) * 0x1p-53 >= r->probability))
			continue;
		r->fired++;
		delay = r->delay_us;
		error = r->error;
		for (i = 0; (1U << i) != op; i++)
			;
		if (f->debug)
			fprintf(stderr, "fuseexport: fault rule %u (%s) fired on %s "
				"%llu+%llu: error %s, delay %llu us\n", r->number,
				r->text, fault_op_names[i], (unsigned long long)pos,
				(unsigned long long)len, errno_name(error),
				(unsigned long long)delay);
		break;
	}
	pthread_mutex_unlock(&f->lock);
	t.tv_sec = delay / 1000000;
	t.tv_nsec = delay % 1000000 * 1000;
	while (delay && nanosleep(&t, &t) < 0 && errno == EINTR)
		;
	return -error;
}

static uint64_t fault_size(struct source *s)
{
	return s->below->size(s->below);
}

static ssize_t fault_read(struct source *s, void *buf, size_t n, uint64_t pos)
{
	int r = fault_check(faults_of(s), FAULT_READ, pos, n);

	return r < 0 ? r : s->below->read(s->below, buf, n, pos);
}

/* never a mapping: every READ must meet the rules, those to come included */
static const char *fault_map(struct source *s, uint64_t pos, uint64_t n)
{
	(void)s, (void)pos, (void)n;
	return NULL;
}

static ssize_t fault_write(struct source *s, const void *buf, size_t n,
			   uint64_t pos)
{
	int r = fault_check(faults_of(s), FAULT_WRITE, pos, n);

	return r < 0 ? r : s->below->write(s->below, buf, n, pos);
}

static int fault_flush(struct source *s, bool datasync)
{
	int r = fault_check(faults_of(s), FAULT_FLUSH, 0, 0);

	return r < 0 ? r : s->below->flush(s->below, datasync);
}

static int fault_punch(struct source *s, uint64_t pos, uint64_t len)
{
	int r = fault_check(faults_of(s), FAULT_TRIM, pos, len);

	return r < 0 ? r : s->below->punch(s->below, pos, len);
}

static int fault_zero(struct source *s, uint64_t pos, uint64_t len)
{
	int r = fault_check(faults_of(s), FAULT_ZERO, pos, len);

	return r < 0 ? r : s->below->zero(s->below, pos, len);
}

/* The operations no rule names still fail after a crash */
static int fault_allocate(struct source *s, uint64_t pos, uint64_t len,
			  bool keep_size)
{
	if (atomic_load(&faults_of(s)->crashed))
		return -EIO;
	return s->below->allocate(s->below, pos, len, keep_size);
}

static int64_t fault_seek(struct source *s, uint64_t pos, int whence)
{
	if (atomic_load(&faults_of(s)->crashed))
		return -EIO;
	return s->below->seek(s->below, pos, whence);
}

static int fault_resize(struct source *s, uint64_t size)
{
	if (atomic_load(&faults_of(s)->crashed))
		return -EIO;
	return s->below->resize(s->below, size);
}

static int fault_space(struct source *s, struct space *sp)
{
	return s->below->space(s->below, sp);
}

static void fault_close(struct source *s)
{
	struct faults *f = faults_of(s);

	free_rules(f->rules);
	pthread_mutex_destroy(&f->lock);
	s->below->close(s->below);
	free(f);
}

/* Stand the fault layer on below with rules (which it takes over), its
 * random choices seeded by seed. Exits on failure. */
static struct faults *fault_open(struct source *below, struct fault_rule *rules,
				 uint64_t seed, bool debug)
{
	struct faults *f = calloc(1, sizeof(*f));
	struct fault_rule *r;

	if (!f)
		die("out of memory:");
	pthread_mutex_init(&f->lock, NULL);
	f->rules = rules;
	for (r = rules; r; r = r->next)
		r->number = ++f->numbered;
	f->random = seed;
	f->debug = debug;
	f->s = (struct source){
		.below = below, .writable = below->writable,
		.growable = below->growable, .resizable = below->resizable,
		.passthrough_fd = -1,
		.size = fault_size, .read = fault_read, .map = fault_map,
		.write = fault_write, .flush = fault_flush,
		.punch = fault_punch, .zero = fault_zero,
		.allocate = fault_allocate, .seek = fault_seek,
		.resize = fault_resize, .space = fault_space,
		.close = fault_close,
	};
	return f;
}

/*
 * The volatile write cache (--write-cache=volatile), a disk's cache that
 * loses power: writes, punches, zero ranges and size changes are held in
 * memory, in 4 KiB blocks with a dirty bit per 512-byte sector, until a
 * flush writes them below in order of offset and flushes below. Reads see
 * them over what lies below. A crash drops what is held, or (torn) writes
 * a seeded random half of its sectors below first. One mutex covers it all.
 */
enum { BLOCK = 4096, SECTOR = 512, SECTORS = BLOCK / SECTOR };
enum { HELD_DATA, HELD_PUNCH, HELD_ZERO };	/* what a block holds */

struct held {
	struct held *next;		/* in its bucket */
	uint64_t index;			/* its offset / BLOCK */
	uint8_t dirty;			/* a bit per sector held here */
	uint8_t kind;			/* HELD_PUNCH, HELD_ZERO: all zeros */
	char *data;			/* BLOCK bytes, HELD_DATA only */
};

struct cache {
	struct source s;
	pthread_mutex_t lock;
	struct held **bucket;		/* a hash table of blocks by index */
	size_t buckets, count;
	uint64_t size;			/* the size the export has */
	uint64_t kept;			/* below's bytes from here on were
					 * cut off by a shrink, not yet flushed */
	uint64_t random;		/* splitmix64's state, for crash torn */
	bool crashed;
};

static struct cache *cache_of(struct source *s)
{
	return (struct cache *)s;
}

static struct held **bucket_of(struct cache *c, uint64_t index)
{
	return &c->bucket[(index * 0x9e3779b97f4a7c15ULL >> 20) & (c->buckets - 1)];
}

static struct held *find_held(struct cache *c, uint64_t index)
{
	struct held *b = *bucket_of(c, index);

	while (b && b->index != index)
		b = b->next;
	return b;
}

/* The block at index, made (holding nothing, with a data buffer if
 * with_data) if it is not there. Returns it, or NULL: out of memory. */
static struct held *get_held(struct cache *c, uint64_t index, bool with_data)
{
	struct held *b = find_held(c, index), **p;
	size_t i;

	if (b)
		return b;
	if (c->count >= c->buckets) {	/* double the table */
		struct held **old = c->bucket, *next;
		size_t n = c->buckets;

		c->bucket = calloc(2 * n, sizeof(*c->bucket));
		if (!c->bucket) {
			c->bucket = old;
			return NULL;
		}
		c->buckets = 2 * n;
		for (i = 0; i < n; i++)
			for (b = old[i]; b; b = next) {
				next = b->next;
				p = bucket_of(c, b->index);
				b->next = *p;
				*p = b;
			}
		free(old);
	}
	b = calloc(1, sizeof(*b));
	if (!b || (with_data && !(b->data = malloc(BLOCK)))) {
		free(b);
		return NULL;
	}
	b->index = index;
	p = bucket_of(c, index);
	b->next = *p;
	*p = b;
	c->count++;
	return b;
}

static void drop_held(struct cache *c, struct held *b)
{
	struct held **p = bucket_of(c, b->index);

	while (*p != b)
		p = &(*p)->next;
	*p = b->next;
	c->count--;
	free(b->data);
	free(b);
}

static int by_index(const void *a, const void *b)
{
	uint64_t x = (*(struct held *const *)a)->index;
	uint64_t y = (*(struct held *const *)b)->index;

	return x < y ? -1 : x > y;
}

/* Every block held, in order of offset, in a new array of c->count
 * entries, or NULL: out of memory (or nothing held) */
static struct held **sorted_held(struct cache *c)
{
	struct held **all = malloc((c->count + 1) * sizeof(*all)), *b;
	size_t i, n = 0;

	for (i = 0; all && i < c->buckets; i++)
		for (b = c->bucket[i]; b; b = b->next)
			all[n++] = b;
	if (all)
		qsort(all, n, sizeof(*all), by_index);
	return all;
}

/* Read n bytes at pos of what lies below into buf: zeros past where a
 * shrink cut it off. Returns 0 or -errno. */
static int read_below(struct cache *c, char *buf, size_t n, uint64_t pos)
{
	size_t part = pos < c->kept ? min_u64(n, c->kept - pos) : 0;
	ssize_t r = part ? c->s.below->read(c->s.below, buf, part, pos) : 0;

	if (r < 0)
		return r;
	memset(buf + r, 0, n - r);	/* short only at below's end */
	return 0;
}

/* Make a block's bytes its own: a data buffer, holding zeros if it held
 * zeros. Returns 0 or -ENOMEM. */
static int own_data(struct held *b)
{
	if (!b->data && !(b->data = calloc(1, BLOCK)))
		return -ENOMEM;
	b->kind = HELD_DATA;
	return 0;
}

/* Hold the sector at pos (in the block that holds it), filled from below
 * if it is not held yet, before part of it is written. Returns 0 or -errno. */
static int hold_sector(struct cache *c, uint64_t pos)
{
	struct held *b = get_held(c, pos / BLOCK, true);
	unsigned k = pos % BLOCK / SECTOR;
	int r;

	if (!b || own_data(b) < 0)
		return -ENOMEM;
	if (b->dirty & (1 << k))
		return 0;
	r = read_below(c, b->data + k * SECTOR, SECTOR, pos - pos % SECTOR);
	if (r == 0)
		b->dirty |= 1 << k;
	return r;
}

/* Hold len bytes at pos: buf's, or zeros of kind (a punch or a zero range)
 * where buf is NULL. The partial sectors at either end are filled from
 * below first, so a failure there changes nothing. Returns 0 or -errno. */
static int hold(struct cache *c, const char *buf, uint64_t len, uint64_t pos,
		int kind)
{
	uint64_t end = pos + len, at;
	int r;

	if (!len)
		return 0;
	if ((pos % SECTOR && (r = hold_sector(c, pos)) < 0) ||
	    (end % SECTOR && (r = hold_sector(c, end - 1)) < 0))
		return r;
	for (at = pos; at < end; ) {
		uint64_t index = at / BLOCK, from = at % BLOCK;
		uint64_t to = min_u64(end - index * BLOCK, BLOCK);
		struct held *b;
		unsigned k;

		if (!buf && from == 0 && to == BLOCK) {	/* zeros, whole */
			b = get_held(c, index, false);
			if (!b)
				return -ENOMEM;
			free(b->data);
			b->data = NULL;
			b->kind = kind;
			b->dirty = 0xff;
		} else {
			b = get_held(c, index, true);
			if (!b || own_data(b) < 0)
				return -ENOMEM;
			if (buf)
				memcpy(b->data + from, buf + (at - pos), to - from);
			else
				memset(b->data + from, 0, to - from);
			for (k = from / SECTOR; k * SECTOR < to; k++)
				b->dirty |= 1 << k;
		}
		at = index * BLOCK + to;
	}
	return 0;
}

/* Is every sector that n bytes at pos touch held? */
static bool all_held(struct cache *c, uint64_t pos, uint64_t n)
{
	uint64_t s;

	for (s = pos / SECTOR; n && s <= (pos + n - 1) / SECTOR; s++) {
		struct held *b = find_held(c, s / SECTORS);
		if (!b || !(b->dirty & (1 << s % SECTORS)))
			return false;
	}
	return true;
}

static uint64_t cache_size(struct source *s)
{
	struct cache *c = cache_of(s);
	uint64_t size;

	pthread_mutex_lock(&c->lock);
	size = c->size;
	pthread_mutex_unlock(&c->lock);
	return size;
}

/* What lies below, then every held sector over it; a range held whole
 * does not reach below */
static ssize_t cache_read(struct source *s, void *buf, size_t n, uint64_t pos)
{
	struct cache *c = cache_of(s);
	uint64_t at, end;
	ssize_t r = 0;

	pthread_mutex_lock(&c->lock);
	if (c->crashed)
		r = -EIO;
	n = pos < c->size ? min_u64(n, c->size - pos) : 0;
	if (!r && !all_held(c, pos, n))
		r = read_below(c, buf, n, pos);
	end = pos + n;
	for (at = pos - pos % SECTOR; !r && at < end; at += SECTOR) {
		struct held *b = find_held(c, at / BLOCK);
		uint64_t from = at > pos ? at : pos, to = min_u64(at + SECTOR, end);

		if (!b || !(b->dirty & (1 << at % BLOCK / SECTOR)))
			continue;
		if (b->data)
			memcpy((char *)buf + (from - pos),
			       b->data + from % BLOCK, to - from);
		else
			memset((char *)buf + (from - pos), 0, to - from);
	}
	pthread_mutex_unlock(&c->lock);
	return r < 0 ? r : (ssize_t)n;
}

static const char *cache_map(struct source *s, uint64_t pos, uint64_t n)
{
	(void)s, (void)pos, (void)n;
	return NULL;			/* the source lacks what is held */
}

static ssize_t cache_write(struct source *s, const void *buf, size_t n,
			   uint64_t pos)
{
	struct cache *c = cache_of(s);
	int r;

	pthread_mutex_lock(&c->lock);
	if (!s->growable)
		n = pos < c->size ? min_u64(n, c->size - pos) : 0;
	r = c->crashed ? -EIO : hold(c, buf, n, pos, HELD_DATA);
	if (r == 0 && pos + n > c->size)
		c->size = pos + n;
	pthread_mutex_unlock(&c->lock);
	return r < 0 ? r : (ssize_t)n;
}

/* Write every held block below, in order of offset, and drop it once it
 * is there; the caller holds the lock. A size changed since the last
 * flush is set first. Returns 0, or -errno with what failed still held. */
static int write_back(struct cache *c)
{
	struct source *below = c->s.below;
	struct held **all;
	size_t i, n = c->count;
	int r = 0;

	if (c->kept < below->size(below) && (r = below->resize(below, c->kept)) < 0)
		return r;
	if (c->size != below->size(below) && (r = below->resize(below, c->size)) < 0)
		return r;
	c->kept = c->size;
	if (!n)
		return 0;
	all = sorted_held(c);
	if (!all)
		return -ENOMEM;
	for (i = 0; i < n && r == 0; i++) {
		struct held *b = all[i];
		uint64_t pos = b->index * BLOCK, len;
		unsigned k, first;

		if (pos >= c->size) {	/* beyond a shrink: nothing */
			drop_held(c, b);
			continue;
		}
		len = min_u64(BLOCK, c->size - pos);
		if (!b->data)
			r = b->kind == HELD_PUNCH ? below->punch(below, pos, len) :
			    below->zero(below, pos, len);
		for (k = 0; b->data && k < SECTORS && r == 0; k++) {
			if (!(b->dirty & (1 << k)))
				continue;
			for (first = k; k + 1 < SECTORS && (b->dirty & (1 << (k + 1))); k++)
				;
			if (first * SECTOR >= len)
				break;
			r = below->write(below, b->data + first * SECTOR,
					 min_u64((k + 1 - first) * SECTOR,
						 len - first * SECTOR),
					 pos + first * SECTOR);
			r = r < 0 ? r : 0;
		}
		if (r == 0)
			drop_held(c, b);
	}
	free(all);
	return r;
}

static int cache_flush(struct source *s, bool datasync)
{
	struct cache *c = cache_of(s);
	int r;

	pthread_mutex_lock(&c->lock);
	r = c->crashed ? -EIO : write_back(c);
	if (r == 0)
		r = s->below->flush(s->below, datasync);
	pthread_mutex_unlock(&c->lock);
	return r;
}

static int cache_zeros(struct source *s, uint64_t pos, uint64_t len, int kind)
{
	struct cache *c = cache_of(s);
	int r;

	pthread_mutex_lock(&c->lock);
	len = pos < c->size ? min_u64(len, c->size - pos) : 0;
	r = c->crashed ? -EIO : hold(c, NULL, len, pos, kind);
	pthread_mutex_unlock(&c->lock);
	return r;
}

static int cache_punch(struct source *s, uint64_t pos, uint64_t len)
{
	return cache_zeros(s, pos, len, HELD_PUNCH);
}

static int cache_zero(struct source *s, uint64_t pos, uint64_t len)
{
	return cache_zeros(s, pos, len, HELD_ZERO);
}

/* A shrink zeros the tail of the block it ends in and drops the blocks
 * past it; what lies below past it reads as zeros until a flush */
static int cache_resize(struct source *s, uint64_t size)
{
	struct cache *c = cache_of(s);
	struct held **all;
	size_t i, n;
	int r = 0;

	pthread_mutex_lock(&c->lock);
	if (c->crashed)
		r = -EIO;
	else if (size < c->size && size % BLOCK)
		r = hold(c, NULL, min_u64(c->size, size - size % BLOCK + BLOCK) - size,
			 size, HELD_ZERO);
	if (r == 0 && size < c->size) {
		n = c->count;
		all = sorted_held(c);
		for (i = 0; all && i < n; i++)
			if (all[i]->index * BLOCK >= size)
				drop_held(c, all[i]);
		free(all);
		c->kept = min_u64(c->kept, size);
	}
	if (r == 0)
		c->size = size;
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* The space is reserved below at once (that changes no byte there); a
 * new size is held like any other change */
static int cache_allocate(struct source *s, uint64_t pos, uint64_t len,
			  bool keep_size)
{
	struct cache *c = cache_of(s);
	int r;

	pthread_mutex_lock(&c->lock);
	r = c->crashed ? -EIO : s->below->allocate(s->below, pos, len, true);
	if (r == 0 && !keep_size && pos + len > c->size)
		c->size = pos + len;
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* The first block at or after index that holds written bytes (not just
 * zeros), or UINT64_MAX; the caller holds the lock */
static uint64_t next_written(struct cache *c, uint64_t index)
{
	uint64_t first = UINT64_MAX;
	struct held *b;
	size_t i;

	for (i = 0; i < c->buckets; i++)
		for (b = c->bucket[i]; b; b = b->next)
			if (b->data && b->index >= index && b->index < first)
				first = b->index;
	return first;
}

/* Below's answer where it still stands, or what pos reads as (zeros past
 * a shrink): SEEK_DATA's offset, SEEK_HOLE's, or UINT64_MAX for no data */
static uint64_t seek_below(struct cache *c, uint64_t pos, int whence)
{
	int64_t r = pos < c->kept ? c->s.below->seek(c->s.below, pos, whence) : -ENXIO;

	if (whence == SEEK_DATA)
		return r < 0 || (uint64_t)r >= c->kept ? UINT64_MAX : (uint64_t)r;
	return r < 0 || (uint64_t)r > c->kept ? c->kept > pos ? c->kept : pos : (uint64_t)r;
}

/* Data is below's or a held write; a hole is one below (or past a shrink)
 * outside every block holding written bytes. Blocks of held zeros count
 * as holes, and a block partly written as data whole: an answer may call
 * a hole data, never the other way round. */
static int64_t cache_seek(struct source *s, uint64_t pos, int whence)
{
	struct cache *c = cache_of(s);
	uint64_t at, held;
	struct held *b;
	int64_t r;

	pthread_mutex_lock(&c->lock);
	if (c->crashed) {
		r = -EIO;
	} else if (whence == SEEK_DATA) {
		held = next_written(c, pos / BLOCK);
		at = min_u64(seek_below(c, pos, SEEK_DATA),
			     held == UINT64_MAX ? held : held * BLOCK);
		at = at < pos ? pos : at;
		r = at < c->size ? (int64_t)at : -ENXIO;
	} else {
		at = seek_below(c, pos, SEEK_HOLE);
		while (at < c->size && (b = find_held(c, at / BLOCK)) && b->data)
			at = seek_below(c, (at / BLOCK + 1) * BLOCK, SEEK_HOLE);
		r = min_u64(at, c->size);
	}
	pthread_mutex_unlock(&c->lock);
	return r;
}

static int cache_space(struct source *s, struct space *sp)
{
	return s->below->space(s->below, sp);
}

/* Drop every held block; the caller holds the lock */
static void drop_all(struct cache *c)
{
	size_t i;

	for (i = 0; i < c->buckets; i++)
		while (c->bucket[i])
			drop_held(c, c->bucket[i]);
}

/* Power lost: drop what is held; torn, write a seeded random half of the
 * held sectors below first. Every request fails with EIO from now on. */
static void cache_crash(struct cache *c, bool torn, bool debug)
{
	struct source *below = c->s.below;
	struct held **all;
	size_t i, n, kept = 0, dropped = 0;
	static const char zeros[SECTOR];
	unsigned k;

	pthread_mutex_lock(&c->lock);
	c->crashed = true;
	n = c->count;
	all = torn ? sorted_held(c) : NULL;
	for (i = 0; all && i < n; i++) {
		uint64_t pos = all[i]->index * BLOCK, end = below->size(below);

		for (k = 0; k < SECTORS; k++) {
			uint64_t at = pos + k * SECTOR;
			if (!(all[i]->dirty & (1 << k)) || at >= end)
				continue;
			if (!(next_random(&c->random) & 1)) {
				dropped++;
				continue;
			}
			below->write(below, all[i]->data ? all[i]->data + k * SECTOR :
				     zeros, min_u64(SECTOR, end - at), at);
			kept++;
		}
	}
	free(all);
	if (!torn)
		for (i = 0; i < c->buckets; i++) {
			struct held *b;
			for (b = c->bucket[i]; b; b = b->next)
				dropped += __builtin_popcount(b->dirty);
		}
	drop_all(c);
	pthread_mutex_unlock(&c->lock);
	if (debug)
		fprintf(stderr, "fuseexport: crash%s: %zu unflushed sectors "
			"dropped, %zu written\n", torn ? " torn" : "", dropped, kept);
}

static void cache_close(struct source *s)
{
	struct cache *c = cache_of(s);

	drop_all(c);
	free(c->bucket);
	pthread_mutex_destroy(&c->lock);
	s->below->close(s->below);
	free(c);
}

/* Stand a volatile write cache on below; seed picks the sectors a torn
 * crash keeps. Exits on failure. */
static struct cache *cache_open(struct source *below, uint64_t seed)
{
	struct cache *c = calloc(1, sizeof(*c));

	if (!c || !(c->bucket = calloc(1024, sizeof(*c->bucket))))
		die("out of memory:");
	c->buckets = 1024;
	pthread_mutex_init(&c->lock, NULL);
	c->size = c->kept = below->size(below);
	c->random = seed ^ 0x5eed;
	c->s = (struct source){
		.below = below, .writable = below->writable,
		.growable = below->growable, .resizable = below->resizable,
		.passthrough_fd = -1,
		.size = cache_size, .read = cache_read, .map = cache_map,
		.write = cache_write, .flush = cache_flush,
		.punch = cache_punch, .zero = cache_zero,
		.allocate = cache_allocate, .seek = cache_seek,
		.resize = cache_resize, .space = cache_space,
		.close = cache_close,
	};
	return c;
}

/*
 * The control FIFO (--control=PATH): one command a line, read by a thread
 * of its own, as a test script writes them: `fault RULE`, `clear`,
 * `crash`, `crash torn`.
 */

/* Power lost: the cache drops (or tears) what it holds, and from now on
 * every request fails with EIO, until the export ends */
static void crash_export(struct export *e, bool torn)
{
	if (e->cache)
		cache_crash(e->cache, torn, e->debug);
	atomic_store(&e->faults->crashed, true);
	if (e->debug && !e->cache)
		fprintf(stderr, "fuseexport: crash: every request fails from now on\n");
}

static bool export_crashed(struct export *e)
{
	return e->faults && atomic_load(&e->faults->crashed);
}

/* Make the FIFO (the caller's, mode 0600; refused if PATH is there) and
 * open it, so that writers never wait for the thread. Exits on failure. */
static void open_control(struct export *e)
{
	const char *path = e->control_path;

	if (!path)
		return;
	if (mkfifo(path, 0600) < 0)
		die(errno == EEXIST ? "--control=%s: exists already (the "
		    "export makes the FIFO itself)" : "--control=%s:", path);
	control_made = path;
	e->control_fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (e->control_fd < 0)
		die("--control=%s:", path);
	e->control_spare = open(path, O_WRONLY | O_CLOEXEC);
	if (e->control_spare < 0 || fchmod(e->control_fd, 0600) < 0 ||
	    fcntl(e->control_fd, F_SETFL, 0) < 0)
		die("--control=%s:", path);
}

/* Remove the FIFO and stop its thread: the export is over */
static void close_control(struct export *e)
{
	if (!e->control_path)
		return;
	unlink(e->control_path);
	control_made = NULL;
	if (e->control_running) {	/* it stops only in read(2) */
		pthread_cancel(e->control_thread);
		pthread_join(e->control_thread, NULL);
		e->control_running = false;
	}
}

/* Carry out one command line; a bad one is reported and ignored */
static void control_command(struct export *e, char *line)
{
	size_t n = strlen(line);
	struct fault_rule *rule;
	char why[512];

	while (n && (line[n - 1] == ' ' || line[n - 1] == '\t' || line[n - 1] == '\r'))
		line[--n] = 0;
	while (*line == ' ' || *line == '\t')
		line++;
	if (!*line)
		return;
	if (!strncmp(line, "fault ", 6)) {
		rule = parse_rule(line + 6, why, sizeof(why));
		if (rule)
			add_rule(e->faults, rule);
		else
			fprintf(stderr, "fuseexport: control: fault %s: %s\n",
				line + 6, why);
		if (rule && e->debug)
			fprintf(stderr, "fuseexport: control: fault rule %u: %s\n",
				rule->number, rule->text);
	} else if (!strcmp(line, "clear")) {
		clear_rules(e->faults);
	} else if (!strcmp(line, "crash") || !strcmp(line, "crash torn")) {
		crash_export(e, line[5]);
	} else {
		fprintf(stderr, "fuseexport: control: '%s': unknown command "
			"(fault RULE, clear, crash, crash torn)\n", line);
	}
}

/* The control thread: read lines until the export ends; with the spare
 * write end open, read(2) never sees an EOF. close_control() cancels it
 * while it waits in read(2), never while it carries out a command. */
static void *control_loop(void *arg)
{
	struct export *e = arg;
	char buf[4096], *start, *nl;
	size_t have = 0;
	ssize_t n;

	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
	for (;;) {
		pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
		n = read(e->control_fd, buf + have, sizeof(buf) - 1 - have);
		pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		have += n;
		for (start = buf; (nl = memchr(start, '\n', buf + have - start));
		     start = nl + 1) {
			*nl = 0;
			control_command(e, start);
		}
		have -= start - buf;
		memmove(buf, start, have);
		if (have == sizeof(buf) - 1) {
			fprintf(stderr, "fuseexport: control: a line over %zu "
				"bytes, ignored\n", have);
			have = 0;
		}
	}
	return NULL;
}

/*
 * What the export does with its stack: the size, resizing, and flushing,
 * each in one place for every handler.
 */

static uint64_t export_size(struct export *e)
{
	return e->top->size(e->top);
}

/* Resize the export; the caller holds e->lock. Returns 0 or -errno. */
static int resize_export(struct export *e, uint64_t size)
{
	uint64_t old = export_size(e);
	int r;

	if (size == old)
		return 0;
	if (!e->top->resizable)
		return -EINVAL;		/* a disk or a window keeps its size */
	if (size > (uint64_t)INT64_MAX)
		return -EFBIG;
	if (size < old) {	/* wait for READs sending what goes away */
		atomic_store(&e->shrinking, true);
		pthread_rwlock_wrlock(&e->map_lock);
	}
	r = e->top->resize(e->top, size);
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
static int flush_export(struct export *e, bool datasync)
{
	int r;

	if (atomic_load(&e->flush_failed))
		return -EIO;
	r = e->top->flush(e->top, datasync);
	if (r < 0)
		atomic_store(&e->flush_failed, true);
	return r;
}

/* Passthrough is possible only where the stack is a bare regular file
 * whose every path may go to the source, as root. Returns why not, or
 * NULL: then INIT asks the kernel. */
static const char *why_no_passthrough(struct export *e)
{
	if (e->want_passthrough == OFF)
		return "--passthrough=off";
	if (e->faults)
		return "fault rules and --control need every request to come "
		       "here";
	if (e->cache)
		return "a volatile write cache needs every request to come here";
	if (e->top->passthrough_fd < 0)
		return "the kernel passes through only to a regular file at the "
		       "same offsets (not a block device, not a window)";
	if (e->writable && !e->growable)
		return "a fixed-size export's writes must come here (passed "
		       "through, they could grow the source)";
	if (geteuid() != 0)
		return "registering a backing file needs root";
	return NULL;
}

static void fill_attr(struct export *e, struct fuse_attr *a)
{
	struct space sp;
	uint64_t size = export_size(e);
	uint64_t sectors = (size + 511) / 512;

	memset(a, 0, sizeof(*a));
	a->ino = FUSE_ROOT_ID;
	a->size = size;
	a->blocks = sectors;
	if (e->top->space(e->top, &sp) == 0)
		a->blocks = min_u64((sp.allocated + 511) / 512, sectors);
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
 * The handlers, one per opcode. Each takes the request in r->in (and a
 * WRITE's payload in r->data), with len the bytes after the in_header, and
 * returns the length of its reply payload, put in r->reply unless it points
 * r->iov[1] elsewhere, or -errno.
 */

/* INIT: agree on the protocol, ask for parallel requests and 1 MiB I/O;
 * whether passthrough and io_uring are used is settled here, before the
 * reply lets any other request in */
static int fuse_init(struct export *e, struct request *r, size_t len)
{
	const struct fuse_init_in *in = &r->in.init;
	struct fuse_init_out *out = &r->reply.init;
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
	if (e->passthrough && !(offered & FUSE_PASSTHROUGH)) {
		e->passthrough = false;
		e->no_passthrough = "the kernel offers no FUSE passthrough "
				    "(Linux 6.9 and later, CONFIG_FUSE_PASSTHROUGH)";
		if (e->want_passthrough == ON)
			return halt(e, "--passthrough=on: %s", e->no_passthrough);
	}
	if (e->passthrough) {
		flags |= FUSE_PASSTHROUGH | FUSE_INIT_EXT;
		out->max_stack_depth = 1;	/* the source is no FUSE file */
	}
	e->uring = e->want_io_uring != OFF && (offered & FUSE_OVER_IO_URING);
	if (e->uring)
		flags |= FUSE_OVER_IO_URING | FUSE_INIT_EXT;
	else if (e->want_io_uring == ON)
		return halt(e, "--io-uring=on: the kernel offers no FUSE over io_uring "
			    "(Linux 6.14 and later, with "
			    "/sys/module/fuse/parameters/enable_uring set to Y)");
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
static int fuse_lookup(struct export *e, struct request *r, size_t len)
{
	(void)e, (void)r, (void)len;
	return -ENOENT;
}

static int fuse_getattr(struct export *e, struct request *r, size_t len)
{
	struct fuse_attr_out *out = &r->reply.attr;

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
static int fuse_setattr(struct export *e, struct request *r, size_t len)
{
	const struct fuse_setattr_in *in = &r->in.setattr;
	uint32_t valid = in->valid, mode = in->mode & 07777;
	int res = 0;

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
		res = resize_export(e, in->size);
	if (res == 0) {
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
	return res < 0 ? res : fuse_getattr(e, r, len);
}

/* Register the source with the kernel as the passthrough backing file,
 * once for the export's life, by whichever comes first of init_done() and
 * the first OPEN: one backing file for every open, as the kernel wants.
 * Returns the backing id, or -errno if it is refused. */
static int open_backing(struct export *e)
{
	struct fuse_backing_map map = { .fd = e->top->passthrough_fd };
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
static int fuse_open(struct export *e, struct request *r, size_t len)
{
	uint32_t flags = r->in.open.flags;
	struct fuse_open_out *out = &r->reply.open;
	int id;

	(void)len;
	if (!e->writable && (flags & O_ACCMODE) != O_RDONLY)
		return -EROFS;
	memset(out, 0, sizeof(*out));
	out->fh = (flags & O_ACCMODE) != O_RDONLY ? FH_WRITES : 0;
	out->open_flags = e->open_flags;
	/* Every open of the inode must pass through, to the same backing
	 * file, and every path of it (read, write, splice, mmap) then goes
	 * there: why_no_passthrough() lets only exports whose writes may
	 * go anywhere do it. */
	if (e->passthrough && (id = open_backing(e)) > 0) {
		out->open_flags = FOPEN_PASSTHROUGH;
		out->backing_id = id;
	}
	return sizeof(*out);
}

/* RELEASE and DESTROY: nothing to let go of, and nothing to say */
static int fuse_nothing(struct export *e, struct request *r, size_t len)
{
	(void)e, (void)r, (void)len;
	return 0;
}

/* READ: the source's bytes, short at the end, sent by writev from the
 * source's mapping (holding map_lock until sent) or from r->data. O_DIRECT
 * asks for the medium, so a failing source is seen: never the mapping. */
static int fuse_read(struct export *e, struct request *r, size_t len)
{
	const struct fuse_read_in *in = &r->in.read;
	const char *map = NULL;
	uint64_t size, n;

	(void)len;
	if (in->size > MAX_WRITE || in->offset > (uint64_t)INT64_MAX - in->size)
		return -EINVAL;
	if (r->zero_copy && !(in->flags & O_DIRECT) && !atomic_load(&e->shrinking)) {
		pthread_rwlock_rdlock(&e->map_lock);
		r->map_locked = true;
	}
	size = export_size(e);
	if (in->offset >= size)
		return 0;
	n = min_u64(in->size, size - in->offset);
	if (r->map_locked)
		map = e->top->map(e->top, in->offset, n);
	if (map) {
		/* one copy, made by writev: a page the source cannot give
		 * fails it with EFAULT, and the kernel gives the reader EIO */
		r->iov[1].iov_base = (void *)map;
		return n;
	}
	r->iov[1].iov_base = r->data;
	return e->top->read(e->top, r->data, n, in->offset);
}

/* WRITE: the payload came into r->data. Past the end a fixed-size export
 * says ENOSPC, or writes what fits; a growable one grows. */
static int fuse_write(struct export *e, struct request *r, size_t len)
{
	const struct fuse_write_in *in = &r->in.write;
	uint64_t n = in->size;
	ssize_t res;

	if (len - sizeof(*in) != n)
		return -EINVAL;
	if (!e->writable)
		return -EROFS;
	if (in->offset > (uint64_t)INT64_MAX - n)
		return -EFBIG;
	if (!e->growable) {
		uint64_t size = export_size(e);

		if (in->offset + n > size) {
			n = in->offset < size ? size - in->offset : 0;
			if (!n && in->size)
				return -ENOSPC;
		}
	}
	res = e->top->write(e->top, r->data, n, in->offset);
	if (res < 0)
		return res;
	r->reply.write.size = res;
	r->reply.write.padding = 0;
	return sizeof(r->reply.write);
}

/* FLUSH (every close): what a writing open wrote reaches the disk; a
 * read-only close neither flushes nor takes another's error */
static int fuse_flush(struct export *e, struct request *r, size_t len)
{
	(void)len;
	return r->in.flush.fh & FH_WRITES ? flush_export(e, true) : 0;
}

static int fuse_fsync(struct export *e, struct request *r, size_t len)
{
	(void)len;
	return flush_export(e, r->in.fsync.fsync_flags & FUSE_FSYNC_FDATASYNC);
}

/* FALLOCATE: punch hole and zero range read as zeros afterwards; plain
 * allocation reserves space, growing the export as truncate would */
static int fuse_fallocate(struct export *e, struct request *r, size_t len)
{
	const struct fuse_fallocate_in *in = &r->in.fallocate;
	uint64_t size = export_size(e), pos = in->offset, n = in->length;
	uint32_t mode = in->mode;
	int res;

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
	if (pos + n > size && !(mode & FALLOC_FL_KEEP_SIZE) && !e->top->resizable)
		return -ENOSPC;		/* a disk or a window cannot grow */
	if (pos + n > size && (mode & FALLOC_FL_KEEP_SIZE)) {
		if (pos >= size)
			return 0;	/* nothing of the file lies there */
		n = size - pos;
	}
	if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
		uint64_t part = pos < size ? min_u64(n, size - pos) : 0;

		if (part && (res = mode & FALLOC_FL_PUNCH_HOLE ?
			     e->top->punch(e->top, pos, part) :
			     e->top->zero(e->top, pos, part)) < 0)
			return res;
		if (pos + n <= size)
			return 0;
		/* a zero range reaching past the end grows the export */
		pos = size > pos ? size : pos;
		n = in->offset + in->length - pos;
		mode = 0;
	}
	pthread_mutex_lock(&e->lock);	/* a resize, as truncate's */
	res = e->top->allocate(e->top, pos, n, mode & FALLOC_FL_KEEP_SIZE);
	pthread_mutex_unlock(&e->lock);
	return res;
}

/* LSEEK: SEEK_DATA and SEEK_HOLE as the source answers them */
static int fuse_lseek(struct export *e, struct request *r, size_t len)
{
	const struct fuse_lseek_in *in = &r->in.lseek;
	uint64_t size = export_size(e);
	int64_t res;

	(void)len;
	if (in->whence != SEEK_DATA && in->whence != SEEK_HOLE)
		return -EINVAL;
	if (in->offset >= size)
		return -ENXIO;
	res = e->top->seek(e->top, in->offset, in->whence);
	if (res < 0)
		return res;
	r->reply.lseek.offset = min_u64(res, size);
	if (in->whence == SEEK_DATA && r->reply.lseek.offset >= size)
		return -ENXIO;
	return sizeof(r->reply.lseek);
}

/* STATFS: the export in 512-byte blocks; free space only where it can grow */
static int fuse_statfs(struct export *e, struct request *r, size_t len)
{
	struct fuse_kstatfs *st = &r->reply.statfs.st;
	struct space sp;

	(void)len;
	memset(st, 0, sizeof(*st));
	st->bsize = st->frsize = 512;
	st->blocks = (export_size(e) + 511) / 512;
	if (e->top->space(e->top, &sp) == 0) {
		st->bfree = sp.free / 512;
		st->bavail = sp.avail / 512;
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
	int (*handle)(struct export *, struct request *, size_t);
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

/* Serve the request of len bytes in r, and build the reply in r->iov.
 * Returns the number of iovecs to send (0: no reply), or -errno if the
 * export must halt. */
static int serve(struct export *e, struct request *r, size_t len)
{
	const struct fuse_in_header *in = &r->in.hdr;
	const struct operation *op = NULL;
	size_t oplen;
	int res;

	if (len < sizeof(*in))
		return halt(e, "halting: a request of %zu bytes, shorter than its header",
			    len);
	if (in->len != len)
		return halt(e, "halting: a request says %u bytes, %zu came",
			    in->len, len);
	if (in->opcode < FUSE_OPCODE_END && operations[in->opcode].name)
		op = &operations[in->opcode];
	oplen = len - sizeof(*in);

	r->iov[1].iov_base = &r->reply;
	if (!op || !op->handle)
		res = -ENOSYS;
	else if (oplen < op->in_size)
		res = -EINVAL;
	else if (!e->initialized && in->opcode != FUSE_INIT)
		res = -EIO;
	else
		res = op->handle(e, r, oplen);

	if (e->debug)
		fprintf(stderr, "fuseexport: %s #%llu (%zu bytes): %d%s%s\n",
			op ? op->name : "unknown opcode",
			(unsigned long long)in->unique, len, res,
			res < 0 ? " " : "", res < 0 ? strerror(-res) : "");
	if (atomic_load(&e->halted))
		return -EPROTO;
	if (op && op->no_reply)
		return 0;
	r->out.unique = in->unique;
	r->out.error = res < 0 ? res : 0;
	r->out.len = sizeof(r->out) + (res > 0 ? res : 0);
	r->iov[0].iov_base = &r->out;
	r->iov[0].iov_len = sizeof(r->out);
	r->iov[1].iov_len = res > 0 ? res : 0;
	return res > 0 ? 2 : 1;
}

/* After a reply went out, or could not: let a shrink of the source go on */
static void reply_done(struct export *e, struct request *r)
{
	if (r->map_locked) {
		r->map_locked = false;
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

/* Start a ring per possible CPU; the kernel takes requests through them
 * once every queue has registered. Returns 0 or -errno. */
static int start_rings(struct export *e);

/* After the INIT reply: register the passthrough backing file, start the
 * rings, say which path the export takes, and tell the parent it is live.
 * Returns 0, or -EPROTO to halt. */
static int init_done(struct export *e)
{
	int id = e->passthrough ? open_backing(e) : 0, res;

	if (id < 0 && e->want_passthrough == ON)
		return halt(e, "--passthrough=on: the kernel refused the source "
			    "as backing file: %s", strerror(-id));
	if (e->debug && id < 0)
		fprintf(stderr, "fuseexport: passthrough off (the kernel refused "
			"the source as backing file: %s): every read and write "
			"goes through /dev/fuse\n", strerror(-id));
	else if (e->debug && !e->passthrough)
		fprintf(stderr, "fuseexport: passthrough off (%s): every read "
			"and write goes through /dev/fuse\n", e->no_passthrough);
	else if (e->debug)
		fprintf(stderr, "fuseexport: passthrough on: %s go straight to "
			"the source\n", e->writable ? "reads, writes, splice "
			"and mmap" : "reads, splice and mmap");
	if (e->uring && (res = start_rings(e)) < 0)
		return halt(e, "halting: starting the io_uring queues: %s",
			    strerror(-res));
	if (e->debug)
		fprintf(stderr, "fuseexport: transport: %s\n", e->uring ?
			"FUSE over io_uring, a ring per CPU" : "read(2) and "
			"write(2) on /dev/fuse, a thread per queue");
	tell_ready(e);
	return 0;
}

/*
 * The read(2) transport: a thread per queue, each reading requests from
 * its own /dev/fuse fd and writing the replies back to it.
 */

/* read(2) put a request's first REQ_HEAD bytes in r->in and the rest in
 * r->data: an op struct longer than a WRITE's (INIT, SETATTR) is fetched
 * back whole */
static void unspill(struct request *r, size_t len)
{
	if (len > REQ_HEAD && r->in.hdr.opcode != FUSE_WRITE)
		memcpy((char *)&r->in + REQ_HEAD, r->data,
		       min_u64(len, sizeof(r->in)) - REQ_HEAD);
}

/* A queue: read a request, serve it, reply on the same fd, until the
 * kernel says the export is gone (ENODEV) or it halts */
static void *queue_loop(void *arg)
{
	struct queue *q = arg;
	struct export *e = q->e;
	struct request *r = &q->req;
	struct iovec in[2] = { { &r->in, REQ_HEAD }, { r->data, DATA_SIZE } };

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
		unspill(r, n);
		k = serve(e, r, n);
		sent = k <= 0 || writev(q->fd, r->iov, k) >= 0;
		err = errno;
		reply_done(e, r);
		if (k < 0)
			break;
		if (sent) {
			if (r->in.hdr.opcode == FUSE_INIT && init_done(e) < 0)
				break;
		} else if (err == ENODEV) {
			break;
		} else if (err != ENOENT &&	/* ENOENT: the request was aborted */
			   err != EFAULT) {	/* a mapped page failed: EIO sent */
			fprintf(stderr, "fuseexport: reply to request #%llu: %s\n",
				(unsigned long long)r->in.hdr.unique,
				strerror(err));
		}
	}
	if (atomic_fetch_sub(&e->running, 1) == 1 || atomic_load(&e->halted))
		kill(getpid(), SIGUSR1);	/* wake main() */
	return NULL;
}

/* Start the queues: as many as asked with -q, else as many as /dev/fuse
 * lets us clone (at least the first). Exits on failure. */
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
		q->req.data = malloc(DATA_SIZE);
		q->req.zero_copy = true;
		if (!q->req.data)
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
			free(q->req.data);
			atomic_fetch_sub(&e->running, e->queues - i);
			e->queues = i;
			break;
		}
		errno = pthread_create(&q->thread, NULL, queue_loop, q);
		if (errno)
			die("starting queue %u:", i);
	}
}

/*
 * The io_uring transport: a ring per possible CPU, whose entries carry
 * requests and replies; serve() handles them as it does the queues'.
 */

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
	struct request *req = &r->req;
	struct fuse_in_header *in = (struct fuse_in_header *)ent->header.in_out;
	struct fuse_out_header *out = (struct fuse_out_header *)ent->header.in_out;
	uint32_t payload = ent->header.ring_ent_in_out.payload_sz;
	size_t n = 0;
	int k;

	if (payload > DATA_SIZE || in->len < sizeof(*in) ||
	    in->len > sizeof(*in) + sizeof(ent->header.op_in) + payload)
		return halt(e, "halting: an io_uring request of %u bytes with a "
			    "payload of %u", in->len, payload);
	memcpy(&req->in.hdr, in, sizeof(*in));
	memcpy((char *)&req->in + sizeof(*in), ent->header.op_in,
	       sizeof(req->in) - sizeof(*in));
	/* a WRITE's data is the payload, all of it and no more */
	if (in->opcode == FUSE_WRITE && req->in.write.size != payload)
		return halt(e, "halting: an io_uring WRITE of %u bytes with a "
			    "payload of %u", req->in.write.size, payload);
	req->data = ent->payload;	/* the reply is copied there: no mapping */
	k = serve(e, req, in->len);
	if (k < 0)
		return k;
	if (k == 2) {
		n = req->iov[1].iov_len;
		if (req->iov[1].iov_base != ent->payload)
			memcpy(ent->payload, req->iov[1].iov_base, n);
	} else if (k == 0) {		/* no reply wanted: an empty one */
		req->out = (struct fuse_out_header){ sizeof(req->out), 0, in->unique };
	}
	*out = req->out;
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
			    cqe->res != -ECONNABORTED && e->want_io_uring == ON)
				halt(e, "--io-uring=on: the kernel refused a queue: %s",
				     strerror(-cqe->res));
		}
		__atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
	}
	if (atomic_load(&e->halted))
		kill(getpid(), SIGUSR1);	/* wake main() */
	return NULL;
}

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

/* Parse a byte count with an optional K, M, G or T suffix; exit if bad */
static uint64_t parse_number(const char *what, const char *s, uint64_t min,
			     uint64_t max)
{
	uint64_t v;

	if (!scan_number(s, &v) || v > max || v < min)
		die("%s: '%s' is not a number from %llu to %llu", what, s,
		    (unsigned long long)min, (unsigned long long)max);
	return v;
}

/* Parse auto, on or off; exit if it is none of them */
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

/* -h, -V: print text on stdout and exit 0, or 1 if it could not be written */
static _Noreturn void print_and_exit(const char *text)
{
	if (fputs(text, stdout) == EOF || fflush(stdout) == EOF)
		die("stdout:");
	exit(0);
}

/* The options, one row each: --NAME (NULL: none), NAME in an -o list
 * (NULL: none), the short option or OPT_ id, whether it takes a value, and
 * the value a bare -o NAME stands for. Both parsers apply them through
 * set_option(), so each is parsed in one place. */
enum { OPT_ALLOW_OTHER = 256, OPT_PASSTHROUGH, OPT_IO_URING, OPT_OFFSET,
       OPT_SIZE, OPT_READ_ONLY, OPT_FAULT, OPT_SEED, OPT_WRITE_CACHE,
       OPT_CONTROL };
static const struct option_row {
	const char *name, *mount_name;
	int id;
	bool value;
	const char *bare;
} option_table[] = {
	{ "writable", "rw", 'w', false, NULL },
	{ NULL, "ro", OPT_READ_ONLY, false, NULL },
	{ "growable", "growable", 'g', false, NULL },
	{ "foreground", NULL, 'f', false, NULL },
	{ "debug", NULL, 'd', false, NULL },
	{ "queues", "queues", 'q', true, NULL },
	{ "allow-other", "allow_other", OPT_ALLOW_OTHER, true, "on" },
	{ "passthrough", "passthrough", OPT_PASSTHROUGH, true, NULL },
	{ "io-uring", "io_uring", OPT_IO_URING, true, NULL },
	{ "offset", "offset", OPT_OFFSET, true, NULL },
	{ "size", "size", OPT_SIZE, true, NULL },
	/* a rule has commas, which end an -o option: --fault only */
	{ "fault", NULL, OPT_FAULT, true, NULL },
	{ "seed", "seed", OPT_SEED, true, NULL },
	{ "write-cache", "write_cache", OPT_WRITE_CACHE, true, NULL },
	{ "control", "control", OPT_CONTROL, true, NULL },
	{ "help", NULL, 'h', false, NULL },
	{ "version", NULL, 'V', false, NULL },
};
#define N_OPTIONS (sizeof(option_table) / sizeof(option_table[0]))

/* Apply one option; what names it in messages ("--queues", "-o queues").
 * Exits on a bad value. */
static void set_option(struct export *e, int id, const char *value,
		       const char *what)
{
	struct fault_rule *rule, **last;
	char why[512];

	switch (id) {
	case 'g':
		e->growable = true;
		/* fall through */
	case 'w':
		e->writable = true;
		break;
	case OPT_READ_ONLY:
		e->writable = e->growable = false;
		break;
	case 'd':
		e->debug = true;
		/* fall through */
	case 'f':
		e->foreground = true;
		break;
	case 'q':
		e->queues = parse_number(what, value, 1, MAX_QUEUES);
		e->queues_given = true;
		break;
	case OPT_ALLOW_OTHER:
		e->want_allow_other = parse_mode(what, value);
		break;
	case OPT_PASSTHROUGH:
		e->want_passthrough = parse_mode(what, value);
		break;
	case OPT_IO_URING:
		e->want_io_uring = parse_mode(what, value);
		break;
	case OPT_OFFSET:
		e->offset = parse_number(what, value, 0, INT64_MAX);
		break;
	case OPT_SIZE:
		e->window = parse_number(what, value, 1, INT64_MAX);
		break;
	case OPT_FAULT:
		rule = parse_rule(value, why, sizeof(why));
		if (!rule)
			die("%s=%s: %s", what, value, why);
		for (last = &e->rules; *last; last = &(*last)->next)
			;
		*last = rule;
		break;
	case OPT_SEED:
		e->seed = parse_number(what, value, 0, UINT64_MAX);
		break;
	case OPT_WRITE_CACHE:
		if (strcmp(value, "volatile") && strcmp(value, "none"))
			die("%s: '%s' is not volatile or none", what, value);
		e->write_cache = !strcmp(value, "volatile");
		break;
	case OPT_CONTROL:
		if (!*value)
			die("%s: needs a path", what);
		e->control_path = value;
		break;
	case 'h':
		print_and_exit(usage_text);
	case 'V':
		print_and_exit("fuseexport " VERSION "\n");
	}
}

/* Take a mount-style option list (-o, and mount(8)'s helper calls) */
static void parse_mount_options(struct export *e, char *list)
{
	static const char *const ignored[] = {
		"defaults", "nofail", "_netdev", "dev", "nodev", "suid", "nosuid",
		"exec", "noexec", "auto", "noauto", "user", "nouser", "users",
		"owner", "group", "atime", "noatime", "relatime", NULL
	};
	char *opt, *value, *next, what[64];
	const struct option_row *row;
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
		for (row = option_table; row < option_table + N_OPTIONS; row++)
			if (row->mount_name && !strcmp(opt, row->mount_name))
				break;
		if (row == option_table + N_OPTIONS || (value && !row->value) ||
		    (!value && row->value && !row->bare))
			die("-o %s%s%s: unknown option (see --help)", opt,
			    value ? "=" : "", value ? value : "");
		snprintf(what, sizeof(what), "-o %s", opt);
		set_option(e, row->id, value ? value : row->bare, what);
	}
}

/* Called as mount.fuseexport or mount.fuse.fuseexport, by mount(8)? */
static bool mount_helper(const char *argv0)
{
	const char *name = strrchr(argv0, '/');

	name = name ? name + 1 : argv0;
	return !strcmp(name, "mount.fuseexport") ||
	       !strcmp(name, "mount.fuse.fuseexport");
}

/* The command line, or mount(8)'s helper call; exits on a bad one */
static void parse_options(struct export *e, int argc, char *argv[])
{
	struct option longopts[N_OPTIONS + 1];
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	/* mount(8) calls helpers as SOURCE MOUNTPOINT [-sfnv] [-N NS]
	 * [-o OPTS] [-t TYPE]: -f there means "fake", the others are ours */
	bool helper = mount_helper(argv[0]), fake = false;
	struct timespec now;
	char what[64];
	unsigned i, k = 0;
	int c;

	memset(longopts, 0, sizeof(longopts));
	for (i = 0; i < N_OPTIONS; i++)
		if (option_table[i].name)
			longopts[k++] = (struct option){ option_table[i].name,
				option_table[i].value ? required_argument : no_argument,
				NULL, option_table[i].id };
	e->queues = cpus < 1 ? 1 : cpus > MAX_QUEUES ? MAX_QUEUES : cpus;
	e->want_allow_other = AUTO;
	e->want_passthrough = AUTO;
	e->want_io_uring = OFF;	/* bench.sh: read(2) queues win on 4 KiB I/O */
	clock_gettime(CLOCK_REALTIME, &now);
	e->seed = (uint64_t)now.tv_sec * 1000000000 + now.tv_nsec + getpid();
	opterr = 0;
	optind = 0;		/* a fresh scan, even for a harness's second export */
	while ((c = getopt_long(argc, argv, helper ? ":o:sfnvN:t:" : ":wgfdq:o:hV",
				longopts, NULL)) != -1) {
		if (helper && c == 'f')
			c = 'F';
		switch (c) {
		case 'o':
			parse_mount_options(e, optarg);
			continue;
		case 'F':
			fake = true;
			continue;
		case 's': case 'n': case 'v': case 'N': case 't':
			continue;	/* sloppy, no mtab, verbose, namespace, type */
		case ':':
			die("%s: needs a value", argv[optind - 1]);
		}
		for (i = 0; i < N_OPTIONS && option_table[i].id != c; i++)
			;
		if (c == '?' || i == N_OPTIONS)
			die("%s: unknown option (see --help)", argv[optind - 1]);
		snprintf(what, sizeof(what), "--%s", option_table[i].name);
		set_option(e, c, optarg, what);
	}
	if (argc - optind != 2)
		die("%s: expected SOURCE and MOUNTPOINT (see --help)",
		    argc - optind < 2 ? "too few arguments" : "too many arguments");
	e->source_path = argv[optind];
	e->mountpoint = argv[optind + 1];
	if (fake)
		exit(0);
}

/* Build the source stack (the file, then the window if there is one,
 * the fault layer if rules may come, the volatile cache), settle whether
 * passthrough is even possible, and take the exported file's attributes.
 * Exits on failure. */
static void open_source(struct export *e)
{
	struct stat st;

	if (e->write_cache && !e->writable)
		die("--write-cache=volatile: needs a writable export (-w or -g)");
	e->top = file_open(e->source_path, e->writable, e->growable);
	if (e->offset || e->window)
		e->top = window_open(e->top, e->offset, e->window, e->source_path);
	if (e->rules || e->control_path) {
		e->faults = fault_open(e->top, e->rules, e->seed, e->debug);
		e->rules = NULL;
		e->top = &e->faults->s;
	}
	if (e->write_cache) {
		e->cache = cache_open(e->top, e->seed);
		e->top = &e->cache->s;
	}
	if (e->debug && (e->faults || e->cache))
		fprintf(stderr, "fuseexport: seed %llu (--seed=%llu repeats "
			"every random choice)\n", (unsigned long long)e->seed,
			(unsigned long long)e->seed);
	e->no_passthrough = why_no_passthrough(e);
	if (e->want_passthrough == ON && e->no_passthrough)
		die("--passthrough=on: %s", e->no_passthrough);
	e->passthrough = !e->no_passthrough;

	if (stat(e->source_path, &st) < 0)
		die("%s:", e->source_path);
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

/* Is a FUSE file system (an export, ours or not) mounted at path? */
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

/* MOUNTPOINT: an existing regular file, not already carrying an export;
 * exits if it is not */
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

/* Receive the /dev/fuse fd that fusermount3 sends over sock, as one
 * SCM_RIGHTS message. Returns the fd, or -1. */
static int receive_fd(int sock)
{
	char byte, cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { &byte, 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cmsg;
	ssize_t n;
	int fd = -1;

	while ((n = recvmsg(sock, &msg, 0)) < 0 && errno == EINTR)
		;
	cmsg = n > 0 ? CMSG_FIRSTHDR(&msg) : NULL;
	if (cmsg && cmsg->cmsg_level == SOL_SOCKET &&
	    cmsg->cmsg_type == SCM_RIGHTS && cmsg->cmsg_len == CMSG_LEN(sizeof(int)))
		memcpy(&fd, CMSG_DATA(cmsg), sizeof(int));
	return fd;
}

/* Mount without root, as libfuse does: fusermount3 (setuid root) mounts on
 * our behalf and hands back the /dev/fuse fd over a socket named by
 * _FUSE_COMMFD. Exits with fusermount3's own complaint on failure. */
static void mount_by_fusermount(struct export *e)
{
	char opts[4352] = "fsname=", *prog = find_program(fusermounts);
	char env[32], err[512] = "";
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
	if (e->want_allow_other == ON && !user_allow_other())
		die("--allow-other=on: without root it needs user_allow_other "
		    "in /etc/fuse.conf");
	e->allow_other = e->want_allow_other != OFF && user_allow_other();
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
	e->fuse_fd = receive_fd(sock[0]);
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
 * through fusermount3. Exits on failure. */
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
	e->allow_other = e->want_allow_other != OFF;	/* root may always */
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
		close_control(e);
		exit(1);		/* the server said why */
	}
	close(fds[0]);
	atomic_store(&e->ready_fd, fds[1]);
	setsid();
	if (chdir("/") < 0) {
		/* stay where we are */
	}
}

/* Serve until the export ends; returns the exit status: 1 if it halted
 * or a flush of the source failed */
static int run_export(struct export *e)
{
	sigset_t set;
	bool unmounted = false;
	unsigned i;
	int sig, res;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	if (e->control_path &&
	    (errno = pthread_create(&e->control_thread, NULL, control_loop, e)))
		die("--control: starting its thread:");
	e->control_running = e->control_path != NULL;
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
			if (e->writable && !export_crashed(e))
				flush_export(e, false);
			close_control(e);
			exit(1);
		} else if (sig != SIGUSR1 && !unmounted) {
			if (e->writable && !export_crashed(e))
				flush_export(e, false);	/* failure: told below */
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
	/* after a crash what was held is gone: nothing to flush */
	if (e->writable && !export_crashed(e) &&
	    (res = flush_export(e, false)) < 0) {
		fprintf(stderr, "fuseexport: %s: a flush of the source failed "
			"(%s): writes since the last good one may be lost\n",
			e->source_path, strerror(-res));
		return 1;
	}
	return atomic_load(&e->halted) ? 1 : 0;
}

/* The test harness's entry points: see fuseexport.h */
struct export *fuseexport_new(int argc, char *argv[])
{
	struct export *e = calloc(1, sizeof(*e));

	if (!e)
		die("out of memory:");
	parse_options(e, argc, argv);
	open_source(e);
	e->queues = 1;
	e->queue = calloc(1, sizeof(*e->queue));
	if (!e->queue || !(e->queue->req.data = malloc(DATA_SIZE)))
		die("out of memory:");
	e->queue->e = e;
	e->queue->fd = -1;
	e->quiet = true;
	e->allow_other = e->want_allow_other != OFF;
	e->passthrough = false;		/* no kernel to pass through */
	return e;
}

/* Returns the reply's length, 0 for no reply, -EMSGSIZE for a request
 * longer than read(2) could deliver, or -errno where a server would halt
 * the export */
long fuseexport_request(struct export *e, const void *request, size_t len,
			void *reply, size_t reply_size)
{
	struct request *r = &e->queue->req;
	size_t head = min_u64(len, REQ_HEAD), done = 0;
	int k, i;

	if (len > REQ_HEAD + DATA_SIZE)
		return -EMSGSIZE;	/* read(2) would have refused it */
	memcpy(&r->in, request, head);
	memcpy(r->data, (const char *)request + head, len - head);
	unspill(r, len);
	k = serve(e, r, len);
	for (i = 0; i < k; i++) {
		size_t n = min_u64(r->iov[i].iov_len, reply_size - done);
		memcpy((char *)reply + done, r->iov[i].iov_base, n);
		done += n;
	}
	reply_done(e, r);
	return k < 0 ? k : (long)done;
}

void fuseexport_free(struct export *e)
{
	unsigned i;

	e->top->close(e->top);
	free_rules(e->rules);
	for (i = 0; e->queue && i < e->queues; i++)
		free(e->queue[i].req.data);
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
	open_control(e);
	mount_export(e);
	if (!e->foreground)
		detach(e);
	status = run_export(e);
	close_control(e);
	fuseexport_free(e);
	return status;
}
#endif
