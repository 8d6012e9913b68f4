/* fuseexport.c - one raw file or block device as one regular file, through FUSE
 *
 * Speaks the kernel's FUSE protocol (include/uapi/linux/fuse.h, 7.9 to 7.45)
 * on /dev/fuse itself, with no libfuse: it mounts with mount(2) (without
 * root, through fusermount3), then serves requests with one thread per
 * queue, each blocking in read(2) on its own /dev/fuse fd, or with a thread
 * per CPU on FUSE over io_uring; reads and writes may bypass it altogether
 * by kernel passthrough. Every request, whichever transport brought it, is
 * one struct request handled by serve(), whose handlers speak only to the
 * top of a stack of sources: the file or block device, or an NBD server's
 * export (spoken to as the NBD protocol document says), at the bottom; a
 * window or partition on it; a snapshot; fault rules; a volatile write
 * cache. Modelled on QEMU's FUSE block export (block/export/fuse.c).
 * The usage text below is what -h prints.
 *
 * Contents. The file reads top-down, in these sections, each opening with
 * a banner of one form, "===== NAME =====", which a search finds, then
 * (after some prose, in the longer ones) the lines "Holds:", what it
 * holds, "Uses:", what it uses, and "Used by:", what uses it:
 *
 *    1. Headers and the usage text
 *    2. Limits and modes
 *    3. The request
 *    4. The source stack
 *    5. The export's state
 *    6. Errors and small helpers
 *    7. The file source
 *    8. The NBD source
 *    9. The window
 *   10. Partitions
 *   11. The snapshot
 *   12. The fault layer
 *   13. The volatile write cache
 *   14. The control FIFO
 *   15. The export and its stack
 *   16. The handlers
 *   17. The dispatcher
 *   18. The log of a detached server
 *   19. Going live
 *   20. The read(2) transport
 *   21. The io_uring transport
 *   22. Options
 *   23. Mounting
 *   24. Detaching and --run
 *   25. Serving until the end
 *   26. The test harness's entry points
 *   27. main()
 *
 * One request from start to end: struct request (3), queue_loop (20),
 * serve() (17), a handler such as fuse_read (16), struct source (4) and
 * one layer (the window, 9, is the shortest). doc/design.md draws the
 * whole: the request path, the source stack, who owns which lock and
 * thread, what INIT decides, and the life cycle.
 *
 * Copyright the fuseexport authors.
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

/* ===== Headers and the usage text ===== */
/*
 * Holds: the libc headers; fuseexport.h, the FUSE, io_uring and NBD ABI
 * the program speaks, with its size asserts; VERSION; usage_text, what -h
 * prints. Uses: libc alone. Used by: everything; usage_text by set_option.
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64	/* 32-bit builds: offsets past 4 GiB */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
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
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include "fuseexport.h"

#define VERSION "0.1"

static const char usage_text[] =
"usage: fuseexport [OPTIONS] SOURCE MOUNTPOINT\n"
"       fuseexport --partitions SOURCE\n"
"       fuseexport --commit --snapshot=FILE SOURCE\n"
"\n"
"Export SOURCE (a raw image file, a block device, or an NBD server's export:\n"
"nbd://HOST[:PORT][/EXPORT] or nbd+unix:///EXPORT?socket=PATH, no TLS) as the\n"
"regular file MOUNTPOINT, which must exist and may be SOURCE itself. The\n"
"export ends with umount MOUNTPOINT or SIGTERM to the server. Without root it\n"
"mounts through fusermount3. As mount.fuseexport it takes mount(8)'s helper\n"
"arguments: SOURCE MOUNTPOINT [-o OPTS] [-n] [-v].\n"
#ifdef FUSEEXPORT_STATIC
"This static build looks an NBD HOST up in /etc/hosts and through\n"
"/etc/resolv.conf alone: without them (an initramfs) give a numeric address.\n"
#ifdef __GLIBC__
"glibc: the other NSS modules of nsswitch.conf cannot load into it.\n"
#endif
#endif
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
"      --cache=auto|none|read|writeback  the kernel's page cache for the\n"
"                          export (default auto: passthrough, else read)\n"
"      --spin=auto|off     spin briefly for the next request while it pays\n"
"      --offset=BYTES      export SOURCE from this offset (K, M, G, T suffixes)\n"
"      --size=BYTES        export only this many bytes of SOURCE\n"
"      --partition=N       export partition N of SOURCE (MBR or GPT)\n"
"      --partitions        print SOURCE's partition table and exit\n"
"      --snapshot[=FILE]   copy-on-write: SOURCE is never written; changes\n"
"                          live in memory, or in FILE (exported again: resumed;\n"
"                          a flush makes them durable there, as on a disk)\n"
"      --commit            with --snapshot=FILE: write FILE's changes into\n"
"                          SOURCE, then remove FILE and say so on stderr\n"
"                          (progress too, on a terminal); nothing is mounted\n"
"      --fault=RULE        fail or delay the requests RULE matches; repeat\n"
"                          for more rules, checked in order. RULE is\n"
"                          key=value,...: op=read|write|flush|trim|zero|any\n"
"                          (joined by +), offset=, length= (the range a\n"
"                          request must touch), error=EIO|ENOSPC|...|none,\n"
"                          delay=250us|20ms|2s, probability=0..1, every=N,\n"
"                          after=N, count=N\n"
"      --seed=N            seed every random choice (default: the clock)\n"
"      --write-cache=volatile      hold writes in memory until fsync or\n"
"                          fdatasync (a close is no flush)\n"
"      --control=PATH      make a FIFO at PATH taking the lines: fault RULE,\n"
"                          clear, crash, crash torn\n"
"      --retry=SECONDS     NBD: how long requests wait for a lost connection\n"
"                          to be made again before they fail (default: 30)\n"
"      --log=FILE          a detached server's messages go to FILE, stamped\n"
"                          with the time (default: syslog, else the kernel's\n"
"                          log, as fuseexport[PID]);\n"
"                          refused with -f, -d and --run (stderr is kept)\n"
"      --run=COMMAND       once the export is up, run /bin/sh -c COMMAND with\n"
"                          its path as $1 and $FUSEEXPORT_FILE; end the\n"
"                          export when it exits, exit with its status\n"
"  -o OPTS                 the same as a mount option list: ro, rw, growable,\n"
"                          allow_other, queues=N, passthrough=MODE,\n"
"                          io_uring=MODE, window_offset=, window_size=\n"
"                          (mount(8) takes offset= as its own), partition=,\n"
"                          snapshot[=FILE], cache=, spin=, seed=,\n"
"                          write_cache=, control=, retry=, log=; sync: each\n"
"                          write flushed; other generic mount options ignored\n"
"  -h, --help              show this help\n"
"  -V, --version           show the version\n"
"\n"
"A repeated option takes its last value; contradicting ones are refused.\n";

/* ===== Limits and modes ===== */
/*
 * Holds: the sizes and counts the whole file shares (MAX_WRITE, DATA_SIZE,
 * REQ_HEAD, RING_DEPTH, SPIN_NS...), the AUTO, OFF and ON of the
 * auto|on|off options, and --cache's modes with their names.
 * Uses: fuseexport.h's structs. Used by: every section below.
 */
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
	/* a cached export's smaller reads of the source read this much
	 * around them: a block device's own readahead size (BLKRAGET), a
	 * regular file's the kernel's default, at most the maximum */
	READ_AROUND_DEFAULT = 128 << 10,
	READ_AROUND_MAX = 4 << 20,
	/* a queue may spin this long for the next request before it sleeps,
	 * and the idle CPUs it may spin on are counted this often */
	SPIN_NS = 50000,
	SPIN_SAMPLE_NS = 100000000,
	FH_WRITES = 1,				/* an open's fh: it may write; */
	FH_PAGES = 2,				/* its writes may sit in the
						 * kernel's pages (not passed
						 * through); */
	FH_OPEN_SHIFT = 2,			/* the open's number above */
};
#define MAP_WHOLE (4ULL << 30)

enum { AUTO = -1, OFF = 0, ON = 1 };
/* --cache: who keeps the export's pages */
enum { CACHE_AUTO = -1, CACHE_NONE, CACHE_READ, CACHE_WRITEBACK };
static const char *const cache_names[] = { "none", "read", "writeback" };

/* ===== The request ===== */
/*
 * Holds: struct request, one request in flight and the reply it gets.
 * Uses: fuseexport.h's op and reply structs. Used by: both transports
 * (each queue and each ring owns one), serve() and the handlers.
 */

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

/* ===== The source stack ===== */
/*
 * The source stack, after nbdkit's filters: every layer is a struct source,
 * the operations below and the layer it stands on (none for the bottom). A
 * layer that has nothing to say about an operation passes it down as it
 * is (pass_*); where its offsets differ from the lower one's (the window),
 * its own operations turn them. Handlers call only the top. What a layer
 * allows is fixed when the stack is built.
 *
 * Holds: struct source; struct space, WRITE_FUA and struct stamp, which
 * its operations pass; the operations the layers above the bottom share,
 * which pass down (pass_*) or refuse (no_map, no_resize). Uses: nothing.
 * Used by: every layer (sections 7 to 13), open_source(), which builds
 * the stack, and the handlers, through e->top alone.
 */
struct space {
	uint64_t allocated;	/* bytes the source holds */
	uint64_t free, avail;	/* room to grow, where it can: bytes */
};

/* A write's flags: WRITE_FUA, durable before it returns, as a disk's
 * Force Unit Access (a layer may flush more to get there) */
enum { WRITE_FUA = 1 };

/* What a source shows of its bytes' history: equal stamps taken at two
 * times prove nothing changed them in between (see file_stamp) */
struct stamp {
	uint64_t dev, ino, size;
	int64_t mtime_sec, mtime_nsec, ctime_sec, ctime_nsec;
};

struct source {
	struct source *below;
	bool writable, growable;
	bool resizable;		/* truncate and fallocate may change its size */
	int passthrough_fd;	/* a regular file the kernel may pass reads
				 * and writes to at the same offsets, or -1 */
	const char *no_passthrough;	/* and if not, why */
	unsigned sector_size;	/* its logical sector: partition tables */
	unsigned io_size;	/* the I/O size it prefers: st_blksize */

	/* the size in bytes */
	uint64_t (*size)(struct source *s);
	/* up to n bytes at pos into buf: the number read, short only at the
	 * end, or -errno */
	ssize_t (*read)(struct source *s, void *buf, size_t n, uint64_t pos);
	/* n bytes at pos in a shared mapping, for a reply to be sent from,
	 * or NULL: read them instead */
	const char *(*map)(struct source *s, uint64_t pos, uint64_t n);
	/* n bytes of buf at pos, with WRITE_* flags: the number written
	 * (short only after a fault the next write meets), or -errno */
	ssize_t (*write)(struct source *s, const void *buf, size_t n, uint64_t pos,
			 unsigned flags);
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
	/* the kernel caches the export's pages above: keep no second copy
	 * of them below */
	void (*keep_no_copy)(struct source *s);
	/* its stamp now: true with st filled where a later equal stamp
	 * proves the bytes unchanged, false where nothing can (a writer
	 * elsewhere may change them unseen) */
	bool (*stamp)(struct source *s, struct stamp *st);
	/* let go of this layer and those below */
	void (*close)(struct source *s);
};

/* The layers that have nothing of their own to say pass it down */
static void pass_keep_no_copy(struct source *s)
{
	s->below->keep_no_copy(s->below);
}

/* the layer's own changes all come through the export: what changes
 * below unseen is what a stamp must catch */
static bool pass_stamp(struct source *s, struct stamp *st)
{
	return s->below->stamp(s->below, st);
}

static uint64_t pass_size(struct source *s)
{
	return s->below->size(s->below);
}

static int pass_space(struct source *s, struct space *sp)
{
	return s->below->space(s->below, sp);
}

/* never a mapping: a layer that must see every READ, or holds data the
 * source lacks */
static const char *no_map(struct source *s, uint64_t pos, uint64_t n)
{
	(void)s, (void)pos, (void)n;
	return NULL;
}

/* The resize of a source whose size is not its own to change (an NBD
 * server's export, a window, a snapshot): EINVAL, as for a block device.
 * A backstop: resize_export refuses first, where the top is not resizable */
static int no_resize(struct source *s, uint64_t size)
{
	(void)s, (void)size;
	return -EINVAL;
}

/* ===== The export's state ===== */
/*
 * Holds: struct options, what the command line asked for, and struct
 * export, one export's state: what owns each field is said by groups, and
 * doc/design.md says which lock or thread owns each part.
 * Uses: struct request, struct source. Used by: open_bottom,
 * list_partitions, commit_snapshot and everything from section 14 on;
 * the layers' operations never see it.
 */

/* What the command line and -o asked for: parse_options() fills it in and
 * nothing writes it after. Where the export settles a value of its own (a
 * path made absolute, the queues it could clone, the cache INIT chose),
 * struct export keeps that apart and says so. */
struct options {
	const char *source_path;	/* SOURCE as given */
	const char *mountpoint;		/* MOUNTPOINT as given; NULL with
					 * --partitions and --commit */
	bool writable, growable;	/* -w (-g, --snapshot: it too), -g */
	bool sync;			/* -o sync: every write made durable */
	bool foreground, debug;		/* -f, -d */
	bool helper;			/* called by mount(8) */
	unsigned queues;		/* -q, else the online CPUs */
	bool queues_given;		/* -q: exactly that many, or fail */
	int want_allow_other, want_passthrough, want_io_uring; /* AUTO, OFF, ON */
	int want_spin;			/* AUTO or OFF */
	int cache;			/* --cache: CACHE_*, CACHE_AUTO if not */
	uint64_t offset;		/* the window's start in the source */
	uint64_t window;		/* its length; 0: to the end */
	unsigned partition;		/* --partition: its number, or 0 */
	bool list_partitions;		/* --partitions: print them, export nothing */
	bool snapshot, commit;		/* --snapshot, --commit */
	const char *snapshot_file;	/* its FILE as given, or NULL: in memory */
	/* --fault, in order: open_source() hands them to the fault layer,
	 * which owns them from then on (adds, clears, frees) */
	struct fault_rule *rules;
	uint64_t seed;			/* --seed, or from the clock */
	bool write_cache;		/* --write-cache=volatile */
	const char *control_path;	/* --control: the FIFO as given */
	unsigned retry;			/* NBD: seconds to wait for a reconnect */
	const char *run_command;	/* --run: what the export lives for */
	const char *log_path;		/* --log: a detached server's messages */
};

/* One export: what was asked, the source stack, what the exported file
 * looks like, the queues. The groups below say who writes their fields and
 * when; a field several threads read without e->lock is atomic, or is
 * written before any of them may read it (at setup, or by INIT). */
struct export {
	struct options opt;		/* what was asked: read-only */

	/* Setup (main(), fuseexport_new()), before the first request; read
	 * alone after. The paths start as given (options_or_exit()), and are
	 * made absolute before detach() leaves the caller's directory. */
	const char *source_path;	/* absolute once resolved (a file) */
	const char *mountpoint;		/* absolute once checked */
	const char *control_path;	/* --control's FIFO, absolute once resolved */
	const char *snapshot_file;	/* the same for --snapshot's FILE */
	char *mountpoint_buf;		/* which realpath() allocated */
	char *resolved[3];		/* what resolve_paths() allocated */
	char *fusermount;		/* the fusermount3 that mounted it */
	struct source *top;		/* the stack the handlers speak to */
	struct faults *faults;		/* the layers, if stacked */
	struct cache *volatile_cache;
	bool quiet;			/* a test harness: halts say nothing */
	bool allow_other;		/* decided at mount */
	int fuse_fd;
	int control_fd, control_spare;	/* the FIFO's read end, and a write end
					 * kept so a writer's close is no EOF */

	/* INIT's decisions: open_source() rules passthrough out or not, and
	 * fuse_init() settles the rest before its reply lets any other
	 * request in; read alone after */
	uint32_t minor;			/* negotiated protocol minor */
	bool passthrough, uring;
	const char *no_passthrough;	/* why passthrough is off, if it is */
	int page_cache;			/* CACHE_NONE, _READ or _WRITEBACK: the
					 * kernel's page cache as settled
					 * (opt.cache is what was asked) */
	uint32_t open_flags;		/* for OPEN replies without passthrough */
	bool direct_writers;		/* --cache=read: writing opens take
					 * direct I/O (fuse_open) */
	/* INIT answered: set last by fuse_init, so a queue that sees it
	 * sees what INIT settled (the kernel sends nothing else before it
	 * has the reply, but ThreadSanitizer cannot see that ordering) */
	atomic_bool initialized;

	/* Under e->lock: resize_export's callers (SETATTR) and FALLOCATE's
	 * allocation, and the fields below, which any queue may change; a
	 * WRITE that grows the file, and a punch or zero, take no e->lock */
	pthread_mutex_t lock;
	uint32_t mode, uid, gid;
	struct timespec atime, mtime, ctime;
	int backing_id;			/* the source as passthrough backing
					 * file: 0 not yet, < 0 refused */
	struct stamp stamp;		/* the source's at the last OPEN, */
	bool stamped;			/* if it proves anything */
	uint64_t opens;			/* OPENs so far: each one's number */
	/* the number of the first OPEN to drop the kernel's cache since the
	 * stamp last changed, until a request of that open or a later one
	 * shows a drop done (fuse_open); 0: none in doubt */
	_Atomic uint64_t drop_pending;

	/* What any queue may set as requests come, and the main thread
	 * acts on. Every READ on a read(2) queue (not O_DIRECT, not while
	 * shrinking) holds map_lock shared from before it reads until its
	 * reply is sent, mapped or not (io_uring READs never take it); a
	 * shrink holds it exclusive, and while shrinking is set new READs
	 * read instead, so none meets a page that went away */
	pthread_rwlock_t map_lock;
	atomic_bool shrinking;
	/* the errno of the first flush of the source that failed, or of a
	 * write-back from the kernel's cache (its data lost); 0: none */
	atomic_int flush_error;
	atomic_bool stale;		/* the kernel's cache is to be dropped */
	atomic_bool halted;
	/* opens whose writes may sit in the kernel's pages (FH_PAGES),
	 * OPEN to RELEASE: while any is live, SEEK_DATA finds no hole */
	atomic_uint page_writers;

	/* The transport: start_queues() makes the queues (and init_done()
	 * the rings, through start_rings()), run_export() joins them */
	struct queue *queue;
	unsigned nqueues;		/* the queues made: opt.queues, or
					 * fewer where /dev/fuse cloned no
					 * more (without -q) */
	struct ring *rings;
	unsigned nrings;
	atomic_int running;		/* queue threads still serving */
	atomic_int ready_fd;		/* tells the waiting parent we're live */
	int ready_pending;		/* the same, until every queue runs */
	atomic_bool init_answered;	/* INIT answered: init_done() ran */

	/* Spinning for the next request: how many queues may spin now (the
	 * idle CPUs), how many do, and the time they spent, which the
	 * queues share; and /proc/stat's idle and total ticks when the
	 * budget was last counted, the main thread's alone */
	atomic_int spin_budget, spinners;
	_Atomic uint64_t spin_ns;
	uint64_t stat_idle, stat_total, stat_at;

	/* The control thread: run_export() starts it, close_control() stops
	 * it */
	pthread_t control_thread;
	bool control_running;
	atomic_bool control_stop;	/* the export is over: the thread ends */
};

/* ===== Errors and small helpers ===== */
/*
 * Holds: the two error regimes: die(), a setup error (one line, the mount
 * and the FIFO undone, exit 1), and halt(), a request stream that can no
 * longer be trusted; the state die() undoes (mounted_export, control_made)
 * and a fuzzer's escape from it; print_and_exit, -h's, -V's and
 * --partitions' way out; MAIN_ONLY; min_u64, lock_soon and scan_number.
 * Uses: unmount_export (Mounting). Used by: everything.
 */

/* What main() alone calls, which a test harness's build leaves out */
#define MAIN_ONLY __attribute__((unused))

/* The export once mounted: a setup error after that unmounts it */
static struct export *mounted_export;
static void unmount_export(struct export *e, bool force);
static int drop_kernel_cache(struct export *e);
/* The control FIFO once made, and which file it is: a setup error after
 * that removes it (remove_control) */
static const char *control_made;
static struct stat control_stat;
static void remove_control(void);
/* A fuzzer's way out of a setup error in code it drives (die() jumps
 * there, saying nothing, instead of exiting); NULL in the program */
static jmp_buf *die_escape;

/* Setup errors: print "fuseexport: <fmt>", undo the mount if there is one,
 * and exit 1. A format ending in ':' gets ": strerror(errno)" appended, as
 * suckless's eprintf does. */
static _Noreturn __attribute__((format(printf, 1, 2)))
void die(const char *fmt, ...)
{
	int saved = errno;
	size_t n = strlen(fmt);
	va_list ap;

	if (die_escape)
		longjmp(*die_escape, 1);
	fputs("fuseexport: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (n && fmt[n - 1] == ':')
		fprintf(stderr, " %s", strerror(saved));
	fputc('\n', stderr);
	if (mounted_export)
		unmount_export(mounted_export, true);
	remove_control();
	exit(1);
}

/* -h, -V: print text on stdout and exit 0, or 1 if it could not be written */
static _Noreturn void print_and_exit(const char *text)
{
	if (fputs(text, stdout) == EOF || fflush(stdout) == EOF)
		die("stdout:");
	exit(0);
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

/* flock(fd, op), waiting up to a second for an export unmounted a moment
 * ago to let go (umount returns before its server has exited), so that a
 * script may export or commit again at once. 0, or -1 with errno
 * (EWOULDBLOCK: still held). */
static int lock_soon(int fd, int op)
{
	int i;

	for (i = 0; flock(fd, op | LOCK_NB) < 0; i++) {
		if (errno != EWOULDBLOCK || i == 20)
			return -1;
		usleep(50000);
	}
	return 0;
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

	if (*s < '0' || *s > '9')	/* strtoull takes " -1" and "+1" */
		return false;
	errno = 0;
	n = strtoull(s, &end, 10);
	if (*end && (p = memchr(suffixes, *end & ~0x20, 4)) && !end[1])
		shift = 10 * (p - suffixes + 1), end++;
	if (errno || *end || (shift && n > (UINT64_MAX >> shift)))
		return false;
	*v = (uint64_t)n << shift;
	return true;
}

/* ===== The file source ===== */
/*
 * The file source: the bottom of every stack, a regular file or a block
 * device, read and written with pread(2) and pwrite(2) at its own offsets.
 *
 * Holds: struct file_source and its operations, the mapping READ replies
 * are sent from, the stamp that proves a file unchanged, and file_open().
 * Uses: the source stack, die, min_u64, lock_soon. Used by: open_bottom
 * (at the end of the NBD source) and the snapshot fuzzer's entry.
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
	/* the kernel caches above: aligned I/O goes to the source opened
	 * O_DIRECT (-1: it cannot be), the rest is dropped behind */
	int direct_fd;
	bool drop_behind;
	/* and a smaller read brings the source's readahead size around it
	 * into the source's page cache, as a fault on the mapping would for
	 * --cache=none: its neighbours wait there until they are read and
	 * dropped behind, so a page is cached once, here or above */
	uint64_t read_around;
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

/* The fd for n bytes of buf at pos: the O_DIRECT one where there is one
 * and everything is aligned to a page, else the plain one */
static int io_fd(struct file_source *f, const void *buf, size_t n, uint64_t pos)
{
	if (f->direct_fd >= 0 && !(((uintptr_t)buf | n | pos) & 4095))
		return f->direct_fd;
	return f->fd;
}

/* Are n bytes at pos all in fd's page cache? Read them into buf if so
 * (a read that waits on nothing: RWF_NOWAIT); false also where the
 * kernel cannot say (before Linux 4.14) */
static bool cached_read(int fd, void *buf, size_t n, uint64_t pos)
{
	struct iovec iov = { buf, n };
	unsigned long half = sizeof(long) * 4;	/* pos in two halves */

	return syscall(SYS_preadv2, fd, &iov, 1, (unsigned long)pos,
		       (unsigned long)(pos >> half >> half), 0x8 /* RWF_NOWAIT */) ==
	       (ssize_t)n;
}

static ssize_t file_read(struct source *s, void *buf, size_t n, uint64_t pos)
{
	struct file_source *f = file_of(s);
	int fd = io_fd(f, buf, n, pos);
	size_t done = 0;

	if (n < f->read_around) {
		fd = f->fd;
		if (cached_read(fd, buf, n, pos))
			done = n;
		else
			posix_fadvise(fd, pos - pos % f->read_around, f->read_around,
				      POSIX_FADV_WILLNEED);
	}

	while (done < n) {
		ssize_t r = pread(fd, (char *)buf + done, n - done, pos + done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EINVAL && fd != f->fd) {
			fd = f->fd;	/* O_DIRECT refused this one */
			continue;
		}
		if (r < 0)
			return done ? (ssize_t)done : -errno;
		if (r == 0)
			break;
		done += r;
	}
	if (f->drop_behind && fd == f->fd)
		posix_fadvise(f->fd, pos, done, POSIX_FADV_DONTNEED);
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

	/* grown since it was mapped, or cached above: READs from the mapping
	 * would keep a second copy in the source's page cache */
	if (!map || pos + n > f->map_size || f->drop_behind)
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

/* FUA: fdatasync once the bytes are written (pwritev2's RWF_DSYNC could
 * flush less on some file systems, but musl has no pwritev2) */
static ssize_t file_write(struct source *s, const void *buf, size_t n,
			  uint64_t pos, unsigned flags)
{
	struct file_source *f = file_of(s);
	int fd = io_fd(f, buf, n, pos);
	size_t done = 0;

	while (done < n) {
		ssize_t r = pwrite(fd, (const char *)buf + done, n - done,
				   pos + done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EINVAL && fd != f->fd) {
			fd = f->fd;	/* O_DIRECT refused this one */
			continue;
		}
		if (r < 0)
			return done ? (ssize_t)done : -errno;
		if (r == 0)
			return done ? (ssize_t)done : -EIO;
		done += r;
	}
	grow_to(f, pos + done);
	if ((flags & WRITE_FUA) && fdatasync(f->fd) < 0)
		return -errno;
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
		ssize_t r = file_write(&f->s, f->zeros, min_u64(len, ZEROS_SIZE), pos, 0);
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
	struct file_source *f = file_of(s);
	off_t r;

	/* a block device answers EINVAL; it keeps no holes: all data, as a
	 * file system without SEEK_DATA answers */
	if (f->is_blockdev)
		return whence == SEEK_DATA ? (int64_t)pos : (int64_t)atomic_load(&f->size);
	r = lseek(f->fd, pos, whence);
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

/* Reopen the source O_DIRECT through /proc (where there is one), and
 * drop behind what goes through the page cache all the same */
static void file_keep_no_copy(struct source *s)
{
	struct file_source *f = file_of(s);
	char path[40];
	long sectors = 0;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", f->fd);
	f->direct_fd = open(path, (s->writable ? O_RDWR : O_RDONLY) | O_DIRECT |
			    O_CLOEXEC | O_NOCTTY);
	f->drop_behind = true;
	if (!f->is_blockdev || ioctl(f->fd, BLKRAGET, &sectors) < 0)
		sectors = READ_AROUND_DEFAULT / 512;
	f->read_around = min_u64((uint64_t)sectors * 512, READ_AROUND_MAX);
}

/*
 * A regular file on a local file system proves itself unchanged by its
 * inode's times and size: every change to its bytes sets its ctime (and
 * mtime) to the time of the change. Three things could still slip past:
 * a store through another process's shared mapping to a page dirty
 * already sets no time (so the dirty pages are written back first, which
 * write-protects them: the next store faults and sets the times; tmpfs
 * writes nothing back, its pages stay writable in such a mapping and its
 * stores set no time, so a file there proves nothing); a
 * change in the same tick of the clock as the last one before the stamp
 * could leave the times as they were (so a ctime not older than the
 * clock's current tick, or its second where the file system keeps
 * seconds, proves nothing); and a network file system's times may lag
 * another client's writes (so only the local ones below count). A block
 * device proves nothing: it may be written through another node, a loop
 * device's backing file, a layer below, another machine, none of which
 * its own inode sees.
 */
static bool local_fs(long type)
{
	static const long types[] = {
		0xEF53,		/* ext2, ext3, ext4 */
		0x58465342,	/* xfs */
		0x9123683E,	/* btrfs */
		0xF2F52010,	/* f2fs */
	};
	size_t i;

	for (i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		if (type == types[i])
			return true;
	return false;
}

static bool file_stamp(struct source *s, struct stamp *st)
{
	struct file_source *f = file_of(s);
	struct timespec now;
	struct statfs sfs;
	struct stat sb;
	bool settled;

	if (f->is_blockdev || fstatfs(f->fd, &sfs) < 0 || !local_fs(sfs.f_type))
		return false;
	if (sync_file_range(f->fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE |
			    SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) < 0)
		return false;
	clock_gettime(CLOCK_REALTIME_COARSE, &now);
	/* A write sets the times as it starts, before its bytes land: times
	 * that settled while one is under way prove nothing. The kernel
	 * grants a read lease only where nobody has the file open for
	 * writing (a writable mapping included; a writable export's own fd
	 * too, so such an export never keeps pages across opens), so no
	 * write is under way now, and one that starts later sets times
	 * newer than now. A lease broken meanwhile sends a SIGIO, which the
	 * server ignores (run_export). */
	if (fcntl(f->fd, F_SETLEASE, F_RDLCK) < 0)
		return false;
	fcntl(f->fd, F_SETLEASE, F_UNLCK);
	if (fstat(f->fd, &sb) < 0)
		return false;
	/* times in whole seconds: the file system keeps no more */
	if (!sb.st_ctim.tv_nsec && !sb.st_mtim.tv_nsec)
		settled = sb.st_ctim.tv_sec < now.tv_sec;
	else
		settled = sb.st_ctim.tv_sec < now.tv_sec ||
			  (sb.st_ctim.tv_sec == now.tv_sec &&
			   sb.st_ctim.tv_nsec < now.tv_nsec);
	if (!settled)
		return false;
	memset(st, 0, sizeof(*st));
	st->dev = sb.st_dev;
	st->ino = sb.st_ino;
	st->size = sb.st_size;
	st->mtime_sec = sb.st_mtim.tv_sec;
	st->mtime_nsec = sb.st_mtim.tv_nsec;
	st->ctime_sec = sb.st_ctim.tv_sec;
	st->ctime_nsec = sb.st_ctim.tv_nsec;
	return true;
}

static void file_close(struct source *s)
{
	struct file_source *f = file_of(s);
	char *map = atomic_load(&f->map);

	if (f->direct_fd >= 0)
		close(f->direct_fd);
	if (map)
		munmap(map, f->map_size);
	munmap((void *)f->zeros, ZEROS_SIZE);
	close(f->fd);
	free(f);
}

/* Open path, a regular file or a block device, into f->fd and its stat
 * into *st. The path's type only says whether to ask for O_EXCL (a block
 * device is then refused while mounted); what was opened is what counts,
 * and O_NONBLOCK keeps a FIFO swapped in meanwhile from hanging the open.
 * Exits on failure. */
static void file_open_fd(struct file_source *f, const char *path,
			 bool writable, struct stat *st)
{
	if (stat(path, st) < 0)
		die("%s:", path);
	if (!S_ISREG(st->st_mode) && !S_ISBLK(st->st_mode))
		die("%s: not a regular file or block device", path);
	f->is_blockdev = S_ISBLK(st->st_mode);
	f->fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOCTTY |
		     O_NONBLOCK | (writable && f->is_blockdev ? O_EXCL : 0));
	if (f->fd < 0 && errno == EBUSY && writable && f->is_blockdev)
		die("%s: in use (mounted, or opened exclusively elsewhere): "
		    "unmount it first (only a read-only or --snapshot "
		    "export may share it)", path);	/* or --commit */
	if (f->fd < 0)
		die("%s:", path);
	if (fstat(f->fd, st) < 0)
		die("%s:", path);
	if (!S_ISREG(st->st_mode) && !S_ISBLK(st->st_mode))
		die("%s: not a regular file or block device", path);
	if (f->is_blockdev != S_ISBLK(st->st_mode))
		die("%s: changed while it was opened", path);
	if (fcntl(f->fd, F_SETFL, 0) < 0)
		die("%s:", path);
}

/* Lock fd, path's, shared or (writable) alone. An export unmounted a
 * moment ago may not have let go yet: wait up to a second for it, so
 * that a script may export again at once. Exits on failure. */
static void file_lock(int fd, const char *path, bool writable)
{
	if (lock_soon(fd, writable ? LOCK_EX : LOCK_SH) == 0)
		return;
	if (errno != EWOULDBLOCK)
		die("%s: lock:", path);
	die("%s: in use by another export (a writer excludes everyone else)",
	    path);
}

/* Open and lock path, a regular file or a block device, as the bottom of
 * a stack. Exits on failure. */
static struct source *file_open(const char *path, bool writable, bool growable)
{
	struct file_source *f = calloc(1, sizeof(*f));
	struct stat st;
	uint64_t size;
	int ro = 0, sector = 512;
	void *zeros;

	if (!f)
		die("out of memory:");
	file_open_fd(f, path, writable, &st);
	if (growable && f->is_blockdev)
		die("%s: --growable needs a regular file, not a block device", path);
	if (f->is_blockdev && (ioctl(f->fd, BLKSSZGET, &sector) < 0 || sector < 512))
		sector = 512;
	if (writable && f->is_blockdev && ioctl(f->fd, BLKROGET, &ro) == 0 && ro)
		die("%s: a read-only block device cannot be exported writable", path);
	file_lock(f->fd, path, writable);
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
		.no_passthrough = f->is_blockdev ? "the kernel passes through "
				  "to regular files only" : NULL,
		.sector_size = sector, .io_size = 4096,
		.size = file_size, .read = file_read, .map = file_map,
		.write = file_write, .flush = file_flush, .punch = file_punch,
		.zero = file_zero, .allocate = file_allocate, .seek = file_seek,
		.resize = file_resize, .space = file_space,
		.keep_no_copy = file_keep_no_copy, .stamp = file_stamp,
		.close = file_close,
	};
	f->direct_fd = -1;
	return &f->s;
}

/* ===== The NBD source ===== */
/*
 * The NBD source (SOURCE nbd://HOST[:PORT][/EXPORT] or
 * nbd+unix:///EXPORT?socket=PATH): the bottom of a stack whose bytes live
 * on an NBD server, spoken to as the NBD project's doc/proto.md says: the
 * fixed newstyle handshake, NBD_OPT_GO, structured replies and the
 * base:allocation context where the server has them. No TLS.
 *
 * A connection carries many requests at once: a caller takes a cookie and
 * sends its request under the send lock; then one caller at a time, in
 * the connection's receive role, takes every reply, checks it as if the
 * server were hostile, puts a READ's data straight into its caller's
 * buffer and wakes that caller, while the others sleep on their own
 * condition variables. The role is a field under the connection's lock,
 * never a signal in the air: it is taken by a caller that finds it free
 * before it sleeps, and given up only to a caller asleep on its request
 * (nbd_leave_role), or kept while a request is half on the wire, since a
 * sender may be blocked until the replies before it are read. With a
 * server that allows it (CAN_MULTI_CONN), a connection per queue (-q N,
 * else one per online CPU), at most NBD_MAX_CONNS, used in turn. A
 * connection that drops is made again by the caller in the receive role,
 * with backoff; the requests in flight are then sent again by their
 * callers, and a caller whose connection has been down longer than
 * --retry gets EIO, as does a request sent NBD_MAX_SENDS times without an
 * answer, even within --retry.
 *
 * Holds: the URI parser, the handshake, the connections and their receive
 * role, reconnecting, the source's operations, nbd_open(), the fuzzers'
 * entries, and open_bottom(), which opens this or the file source.
 * Uses: fuseexport.h's NBD protocol, the source stack, die, min_u64.
 * Used by: open_bottom's callers (open_source, list_partitions,
 * commit_snapshot); run_export gives it source_reconnected to call.
 */
enum {
	NBD_MAX_CONNS = 16,
	NBD_MAX_IO = 32 << 20,		/* the most one READ or WRITE carries,
					 * unless the server wants less */
	NBD_MAX_PIECES = 32,		/* stretches a READ's chunks make
					 * before a map of its bytes counts */
	NBD_MAX_SENDS = 10,		/* sends of a request before EIO */
	NBD_SETUP_SECONDS = 10,		/* for a connection, and then for its
					 * handshake as a whole */
	NBD_DEAD_SECONDS = 30,		/* a TCP peer silent this long, data
					 * or keepalives unacknowledged, is
					 * gone (a host down, a cut cable) */
	NBD_GREETING_NOTE_MS = 1500,	/* no greeting by then: say why it
					 * may be, while still waiting */
	NBD_BACKOFF_MIN_MS = 50,
	NBD_BACKOFF_MAX_MS = 2000,
	NBD_STATUS_MAX = 4 + 8 * (1 << 20),	/* the longest status chunk */
	NBD_RECV_BUFFER = 64 << 10,	/* replies are read this much at once */
	NBD_IO_SIZE_MAX = 1 << 20,	/* the most st_blksize says */
	NBD_REQUEST_SIZE = 64 << 10,	/* a larger READ or WRITE goes out as
					 * requests of this size, all at once:
					 * the server works on them together,
					 * and one this small costs it no
					 * fresh buffer (qemu-nbd maps and
					 * faults in one for 128 KiB and up:
					 * 1 MiB direct reads 4.5x faster as
					 * 16 pieces); a READ's data then
					 * comes in one chunk (DF), the
					 * server need not look for holes */
	NBD_MAX_BATCH = 16,		/* requests in flight for one caller */
};

/* What a handshake agreed; every connection of a source must agree the
 * same, but for its meta context id */
struct nbd_info {
	uint64_t size;
	uint16_t flags;			/* transmission flags */
	bool structured, has_meta;
	uint32_t meta_id;		/* base:allocation's, on this connection */
	uint32_t min_block, preferred, max_payload;
	struct timespec by;		/* the handshake's end, at the latest
					 * (CLOCK_MONOTONIC) */
};

/* A thread with requests in flight on a connection (one, or the pieces
 * of a large READ or WRITE sent at once) */
struct nbd_caller {
	pthread_cond_t wake;
	bool waiting;		/* asleep on wake, not yet woken */
};

/* A request in flight, on its caller's stack */
struct nbd_cmd {
	struct nbd_cmd *next;
	struct nbd_caller *caller;
	uint64_t cookie;
	uint16_t type, flags;
	uint64_t offset;
	uint32_t length;
	char *buf;		/* READ: where its data goes; WRITE: the data */
	unsigned sent;		/* the connection it went out on (0: none) */
	unsigned sends;
	bool done;
	bool sending;		/* its caller is putting it on the wire */
	int error;		/* 0 or -errno */
	/* READ with structured replies: the bytes its chunks covered, and
	 * where: up to NBD_MAX_PIECES stretches, then a bit per byte */
	uint64_t covered;
	unsigned npieces;
	struct { uint64_t start, end; } piece[NBD_MAX_PIECES];
	uint8_t *covered_map;
	/* BLOCK_STATUS: the first offset from `from` whose state whence
	 * (SEEK_DATA, SEEK_HOLE) looks for, or UINT64_MAX; and the end of the
	 * extents reported */
	int whence;
	bool got_status;
	uint64_t from, found, status_end;
};

struct nbd_source;

struct nbd_conn {
	struct nbd_source *n;
	unsigned index;
	pthread_mutex_t send_lock;	/* one request on the wire at a time;
					 * held to change fd */
	pthread_mutex_t lock;		/* the fields below */
	int fd;				/* -1 while down */
	uint32_t meta_id;
	unsigned generation;		/* counts the connections made */
	struct timespec down_since;	/* CLOCK_MONOTONIC */
	unsigned backoff_ms;
	struct nbd_cmd *inflight;
	uint64_t next_cookie;
	struct nbd_caller *receiver;	/* who holds the receive role
					 * (NULL: nobody) */
	/* the receive role's: what it received and has not taken yet */
	char *recv_buf;
	size_t recv_pos, recv_len;
};

struct nbd_source {
	struct source s;
	const char *uri;
	char *host, *port;		/* TCP */
	char *socket_path;		/* a unix socket (abstract: starts with NUL) */
	size_t socket_len;
	char *export_name;
	struct nbd_info info;		/* what the first connection agreed */
	uint32_t max_io;		/* a multiple of info.min_block */
	uint32_t request_size;		/* NBD_REQUEST_SIZE, or max_io if less */
	uint16_t read_flags;		/* of READs: DF where offered */
	unsigned retry;			/* seconds a caller waits for a reconnect */
	bool debug;
	bool setup;			/* connecting for nbd_open: a slow
					 * greeting is worth a word */
	atomic_int outage;		/* said: 0 nothing, 1 a connection
					 * lost, 2 --retry ran out */
	/* told after a reconnect: the server may serve other bytes than the
	 * kernel cached before (NULL: nobody to tell) */
	void (*reconnected)(void *arg);
	void *reconnected_arg;
	pthread_rwlock_t rmw_lock;	/* read-modify-writes of ragged blocks
					 * exclusive, other writes shared */
	const char *zeros;		/* max_io bytes of the zero page */
	atomic_bool zeroes_refused;	/* WRITE_ZEROES: EINVAL or ENOTSUP */
	/* writes the server acknowledged without FUA, how many of them the
	 * last good flush covered, and whether a connection dropped with
	 * some not covered (0 no, 1 yes, 2 said): a server that restarted
	 * may have lost them, so no flush may say they are safe */
	_Atomic uint64_t acked, flushed;
	atomic_int unflushed_lost;
	pthread_condattr_t monotonic;
	unsigned nconns;
	atomic_uint next_conn;
	struct nbd_conn *conn;
};

static struct nbd_source *nbd_of(struct source *s)
{
	return (struct nbd_source *)s;
}

/* Wait for fd to have bytes to read until time by (CLOCK_MONOTONIC):
 * false if by came first */
static bool readable_by(int fd, const struct timespec *by)
{
	struct timespec now;
	long long ms;
	int r;

	do {
		clock_gettime(CLOCK_MONOTONIC, &now);
		ms = (by->tv_sec - now.tv_sec) * 1000LL +
		     (by->tv_nsec - now.tv_nsec) / 1000000;
		if (ms <= 0)
			return false;
		r = poll(&(struct pollfd){ .fd = fd, .events = POLLIN }, 1,
			 ms < INT_MAX ? (int)ms : INT_MAX);
	} while (r < 0 && errno == EINTR);
	return r != 0;		/* an error: read(2) says which */
}

/* Read exactly n bytes from fd, and with by, each by then: 0, or -errno
 * (-ECONNRESET: the stream ended, -ETIMEDOUT: by came) */
static int read_full(int fd, void *buf, size_t n, const struct timespec *by)
{
	while (n) {
		ssize_t r;

		if (by && !readable_by(fd, by))
			return -ETIMEDOUT;
		r = read(fd, buf, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ECONNRESET;
		buf = (char *)buf + r;
		n -= r;
	}
	return 0;
}

/* Send the count buffers at iov whole on the socket fd (iov is used up):
 * 0 or -errno */
static int send_iov(int fd, struct iovec *iov, size_t count)
{
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = count };

	while (msg.msg_iovlen) {
		ssize_t r = sendmsg(fd, &msg, MSG_NOSIGNAL);
		size_t k = r;

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		while (msg.msg_iovlen && k >= msg.msg_iov->iov_len) {
			k -= msg.msg_iov->iov_len;
			msg.msg_iov++;
			msg.msg_iovlen--;
		}
		if (msg.msg_iovlen) {
			msg.msg_iov->iov_base = (char *)msg.msg_iov->iov_base + k;
			msg.msg_iov->iov_len -= k;
		}
	}
	return 0;
}

/* Send a, then b (blen may be 0), whole on the socket fd: 0 or -errno */
static int send_full(int fd, const void *a, size_t alen, const void *b, size_t blen)
{
	struct iovec iov[2] = { { (void *)a, alen }, { (void *)b, blen } };

	return send_iov(fd, iov, 2);
}

/* The value of a hex digit, or -1 */
static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')	/* A-F too, not 0x10-0x19 */
		return (c | 0x20) - 'a' + 10;
	return -1;
}

/* The n bytes at s with their %XX escapes decoded, as a new string whose
 * length goes to *len, or NULL if an escape is bad */
static char *uri_decode(const char *s, size_t n, size_t *len)
{
	char *out = malloc(n + 1), *o = out;
	size_t i;

	if (!out)
		die("out of memory:");
	for (i = 0; i < n; i++) {
		if (s[i] != '%') {
			*o++ = s[i];
		} else if (i + 2 < n && hex_digit(s[i + 1]) >= 0 &&
			   hex_digit(s[i + 2]) >= 0) {
			*o++ = hex_digit(s[i + 1]) * 16 + hex_digit(s[i + 2]);
			i += 2;
		} else {
			free(out);
			return NULL;
		}
	}
	*o = 0;
	*len = o - out;
	return out;
}

/* The authority of an nbd:// URI, from p to end: HOST (or [IPv6
 * address]) and :PORT, the NBD port without one, into n. Exits with one
 * line on a bad one. */
static void nbd_parse_host(struct nbd_source *n, const char *uri,
			   const char *p, const char *end)
{
	const char *host_end, *port;
	char *port_end;
	unsigned long v;

	if (memchr(p, '@', end - p))
		die("%s: a user name is for TLS, which fuseexport does not speak", uri);
	if (*p == '[') {
		host_end = memchr(p, ']', end - p);
		if (!host_end)
			die("%s: an [IPv6 address] without its ]", uri);
		n->host = strndup(p + 1, host_end - p - 1);
		host_end++;
	} else {
		host_end = p + strcspn(p, ":/?");
		n->host = strndup(p, host_end - p);
	}
	if (!n->host)
		die("out of memory:");
	if (!*n->host)
		die("%s: no host (nbd://HOST[:PORT][/EXPORT])", uri);
	if (host_end < end && *host_end != ':')
		die("%s: a bad host", uri);
	port = host_end < end ? host_end + 1 : NBD_DEFAULT_PORT;
	n->port = strndup(port, host_end < end ? (size_t)(end - port)
					      : strlen(port));
	if (!n->port)
		die("out of memory:");
	errno = 0;
	v = strtoul(n->port, &port_end, 10);
	if (!*n->port || *port_end || *n->port < '0' || *n->port > '9' ||
	    errno || v < 1 || v > 65535)
		die("%s: a bad port (1 to 65535)", uri);
}

/* The %-escaped PATH of ?socket=PATH, from p to end, into n: made
 * absolute, since the server reconnects from /. Exits with one line on
 * a bad one. */
static void nbd_parse_socket(struct nbd_source *n, const char *uri,
			     const char *p, const char *end)
{
	struct sockaddr_un sun;
	size_t len;
	char *path = uri_decode(p, end - p, &len), *abs;

	if (!path || !len || (*path && strlen(path) != len))
		die("%s: a bad socket path", uri);
	if (*path && *path != '/') {
		char *cwd = getcwd(NULL, 0);
		if (!cwd || asprintf(&abs, "%s/%s", cwd, path) < 0)
			die("getcwd:");
		free(cwd);
		free(path);
		path = abs;
		len = strlen(path);
	}
	if (len >= sizeof(sun.sun_path))
		die("%s: the socket path is over %zu bytes", uri,
		    sizeof(sun.sun_path) - 1);
	n->socket_path = path;
	n->socket_len = len;
}

/* Take an NBD URI apart as the NBD URI document has it:
 * nbd://HOST[:PORT][/EXPORT] (HOST may be an [IPv6 address]) or
 * nbd+unix:///EXPORT?socket=PATH. Exits with one line on a bad one. */
static void nbd_parse_uri(struct nbd_source *n, const char *uri)
{
	const char *p, *auth_end, *path_end, *q;
	bool unix_socket = !strncmp(uri, "nbd+unix://", 11);
	size_t len;

	if (!strncmp(uri, "nbds", 4))
		die("%s: NBD over TLS is not supported (reach a remote server "
		    "through an SSH-forwarded unix socket instead: see the README)", uri);
	if (strncmp(uri, "nbd://", 6) && !unix_socket)
		die("%s: not an NBD URI (nbd://HOST[:PORT][/EXPORT] or "
		    "nbd+unix:///EXPORT?socket=PATH)", uri);
	if (strchr(uri, '#'))
		die("%s: an NBD URI has no #fragment", uri);
	p = uri + (unix_socket ? 11 : 6);
	auth_end = p + strcspn(p, "/?");
	path_end = auth_end + strcspn(auth_end, "?");
	if (unix_socket && auth_end != p)
		die("%s: nbd+unix takes no host (nbd+unix:///EXPORT?socket=PATH)", uri);
	if (!unix_socket)
		nbd_parse_host(n, uri, p, auth_end);
	if (*auth_end == '/') {
		n->export_name = uri_decode(auth_end + 1, path_end - auth_end - 1, &len);
		if (!n->export_name || strlen(n->export_name) != len)
			die("%s: a bad %%-escape in the export name", uri);
		if (len > NBD_MAX_STRING)
			die("%s: the export name is over %d bytes", uri, NBD_MAX_STRING);
	} else if (!(n->export_name = strdup(""))) {
		die("out of memory:");
	}
	for (q = *path_end ? path_end + 1 : path_end; *q; q += *q == '&') {
		const char *end = q + strcspn(q, "&");

		if (!strncmp(q, "socket=", 7) && unix_socket && !n->socket_path)
			nbd_parse_socket(n, uri, q + 7, end);
		else if (!strncmp(q, "tls", 3))
			die("%s: NBD over TLS is not supported", uri);
		else if (strncmp(q, "x-", 2))
			die("%s: unknown query parameter '%.*s'", uri, (int)(end - q), q);
		q = end;
	}
	if (unix_socket && !n->socket_path)
		die("%s: nbd+unix needs ?socket=PATH", uri);
}

/* A socket of family connected to addr, with a timeout on the connect and
 * the handshake's sends. Returns it, or -errno. */
static int nbd_dial_addr(int family, const struct sockaddr *addr, socklen_t len)
{
	struct timeval tv = { NBD_SETUP_SECONDS, 0 };
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1, err;
	/* without these a dead peer holds requests for TCP's 15 minutes of
	 * retransmits, or for ever on an idle connection; with them the
	 * loss is seen and --retry counts from there */
	int idle = NBD_DEAD_SECONDS / 2, gap = NBD_DEAD_SECONDS / 6, probes = 3;
	unsigned ms = NBD_DEAD_SECONDS * 1000;

	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (family != AF_UNIX) {
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &gap, sizeof(gap));
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
		setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms));
	}
	if (connect(fd, addr, len) == 0)
		return fd;
	err = errno;
	close(fd);
	return -err;
}

/* Connect to the server the URI names. Returns the socket, or -1 with
 * the reason in why. */
static int nbd_dial(struct nbd_source *n, char *why, size_t size)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *ai;
	int fd = -ENOENT, r;

	if (n->socket_path) {
		struct sockaddr_un sun = { .sun_family = AF_UNIX };

		memcpy(sun.sun_path, n->socket_path, n->socket_len);
		fd = nbd_dial_addr(AF_UNIX, (struct sockaddr *)&sun,
				   offsetof(struct sockaddr_un, sun_path) + n->socket_len +
				   (*n->socket_path ? 1 : 0));
		if (fd < 0)
			snprintf(why, size, "%s: %s", n->socket_path[0] ?
				 n->socket_path : "abstract socket", strerror(-fd));
		return fd < 0 ? -1 : fd;
	}
	r = getaddrinfo(n->host, n->port, &hints, &res);
	if (r) {
		snprintf(why, size, "%s: %s", n->host, r == EAI_SYSTEM ?
			 strerror(errno) : gai_strerror(r));
		return -1;
	}
	for (ai = res; ai && fd < 0; ai = ai->ai_next)
		fd = nbd_dial_addr(ai->ai_family, ai->ai_addr, ai->ai_addrlen);
	freeaddrinfo(res);
	if (fd < 0)
		snprintf(why, size, "%s port %s: %s", n->host, n->port, strerror(-fd));
	return fd < 0 ? -1 : fd;
}

/* Send option opt with len bytes of data: 0 or -errno */
static int nbd_send_option(int fd, uint32_t opt, const void *data, uint32_t len)
{
	struct nbd_option o = { htobe64(NBD_OPT_MAGIC), htobe32(opt), htobe32(len) };

	return send_full(fd, &o, sizeof(o), data, len);
}

/* Read one reply to option opt, by info->by: its type to *type, its data
 * (at most size bytes, or it is refused) to buf and its length to *len.
 * Returns 0 or -errno (-EPROTO: not a well-formed reply to opt). */
static int nbd_option_reply(int fd, const struct nbd_info *info, uint32_t opt,
			    uint32_t *type, char *buf, size_t size, uint32_t *len)
{
	struct nbd_option_reply r;
	int res = read_full(fd, &r, sizeof(r), &info->by);

	if (res < 0)
		return res;
	*type = be32toh(r.type);
	*len = be32toh(r.length);
	if (be64toh(r.magic) != NBD_REP_MAGIC || be32toh(r.option) != opt ||
	    *len > size)
		return -EPROTO;
	return read_full(fd, buf, *len, &info->by);
}

/* An option's data, or a reply's: a name or a message and a few fields */
enum { NBD_OPTION_BUF = NBD_MAX_STRING + 64 };

/* A reply that breaks the protocol, said in why. Returns -1, for the
 * caller to pass on. */
static int nbd_bad_reply(char *why, size_t size)
{
	snprintf(why, size, "a bad reply in the handshake");
	return -1;
}

/* An exchange that failed with r, -errno (-EPROTO: a malformed reply),
 * said in why. Returns -1, for the caller to pass on. */
static int nbd_failed(int r, char *why, size_t size)
{
	if (r == -ETIMEDOUT)
		snprintf(why, size, "handshake: not done in %d s (a server "
			 "too slow, or one that does not stop)", NBD_SETUP_SECONDS);
	else
		snprintf(why, size, "handshake: %s", r == -EPROTO ?
			 "a bad reply" : strerror(-r));
	return -1;
}

/* An option's data holds numbers of 32 or 16 bits and strings as a
 * 32-bit length and the bytes, all big-endian. Put v at p: returns where
 * the next field goes. */
static char *nbd_put32(char *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, 4);
	return p + 4;
}

/* Put v at p: returns where the next field goes */
static char *nbd_put16(char *p, uint16_t v)
{
	v = htobe16(v);
	memcpy(p, &v, 2);
	return p + 2;
}

/* Put string s of len bytes at p: returns where the next field goes */
static char *nbd_put_string(char *p, const char *s, uint32_t len)
{
	p = nbd_put32(p, len);
	memcpy(p, s, len);
	return p + len;
}

/* The server's greeting, which must be fixed newstyle, by info->by, and
 * the client's flags in answer. Returns 0, or -1 with the reason in why. */
static int nbd_greet(struct nbd_source *n, int fd, const struct nbd_info *info,
		     char *why, size_t size)
{
	struct { uint64_t magic, opt_magic; uint16_t flags; } __attribute__((packed)) hello;
	uint32_t client;
	int r;

	/* a server that serves one client at a time greets the next only
	 * once the first is gone: say so while the user waits */
	if (n->setup && poll(&(struct pollfd){ .fd = fd, .events = POLLIN }, 1,
			     NBD_GREETING_NOTE_MS) == 0)
		fprintf(stderr, "fuseexport: %s: no greeting from the server yet; "
			"waiting up to %d s. A server that serves one client at a "
			"time greets none while another is connected (qemu-nbd: "
			"-e N or --shared=N serves N)\n", n->uri, NBD_SETUP_SECONDS);
	/* its first byte alone: a server that sent some is no silent one */
	if ((r = read_full(fd, &hello, 1, &info->by)) == -ETIMEDOUT)
		return snprintf(why, size, "the server sent no greeting in "
				"%d s (is it serving another client? "
				"qemu-nbd serves one unless -e N)",
				NBD_SETUP_SECONDS), -1;
	if (r < 0 || (r = read_full(fd, (char *)&hello + 1, sizeof(hello) - 1,
				    &info->by)) < 0)
		return nbd_failed(r, why, size);
	if (be64toh(hello.magic) != NBD_MAGIC)
		return snprintf(why, size, "not an NBD server"), -1;
	if (be64toh(hello.opt_magic) == NBD_OLDSTYLE_MAGIC ||
	    !(be16toh(hello.flags) & NBD_FLAG_FIXED_NEWSTYLE))
		return snprintf(why, size, "the server speaks oldstyle or plain "
				"newstyle NBD; fuseexport speaks fixed newstyle"), -1;
	if (be64toh(hello.opt_magic) != NBD_OPT_MAGIC)
		return snprintf(why, size, "not an NBD server"), -1;
	client = htobe32(NBD_FLAG_FIXED_NEWSTYLE |
			 (be16toh(hello.flags) & NBD_FLAG_NO_ZEROES));
	if ((r = send_full(fd, &client, sizeof(client), NULL, 0)) < 0)
		return nbd_failed(r, why, size);
	return 0;
}

/* NBD_OPT_STRUCTURED_REPLY: READs may skip holes, BLOCK_STATUS works.
 * info->structured says whether the server agreed. Returns 0, or -1 with
 * the reason in why. */
static int nbd_opt_structured(int fd, struct nbd_info *info, char *why,
			      size_t size)
{
	char buf[NBD_OPTION_BUF];
	uint32_t type, len;
	int r;

	if ((r = nbd_send_option(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0)) < 0 ||
	    (r = nbd_option_reply(fd, info, NBD_OPT_STRUCTURED_REPLY, &type,
				  buf, sizeof(buf), &len)) < 0)
		return nbd_failed(r, why, size);
	if (type != NBD_REP_ACK && !(type & NBD_REP_ERR))
		return nbd_bad_reply(why, size);
	info->structured = type == NBD_REP_ACK;
	return 0;
}

/* NBD_OPT_SET_META_CONTEXT for base:allocation, for SEEK_DATA and
 * SEEK_HOLE: info->has_meta and info->meta_id say whether the server has
 * it and its id. Returns 0, or -1 with the reason in why. */
static int nbd_opt_meta_context(struct nbd_source *n, int fd,
				struct nbd_info *info, char *why, size_t size)
{
	static const char context[] = "base:allocation";
	char buf[NBD_OPTION_BUF], *end;
	uint32_t type, len, id;
	int r;

	end = nbd_put_string(buf, n->export_name, strlen(n->export_name));
	end = nbd_put32(end, 1);
	end = nbd_put_string(end, context, sizeof(context) - 1);
	if ((r = nbd_send_option(fd, NBD_OPT_SET_META_CONTEXT, buf, end - buf)) < 0)
		return nbd_failed(r, why, size);
	for (;;) {
		if ((r = nbd_option_reply(fd, info, NBD_OPT_SET_META_CONTEXT,
					  &type, buf, sizeof(buf), &len)) < 0)
			return nbd_failed(r, why, size);
		if (type == NBD_REP_ACK || (type & NBD_REP_ERR))
			break;
		if (type != NBD_REP_META_CONTEXT || len < 4)
			return nbd_bad_reply(why, size);
		if (len - 4 == sizeof(context) - 1 &&
		    !memcmp(buf + 4, context, len - 4)) {
			memcpy(&id, buf, 4);
			info->meta_id = be32toh(id);
			info->has_meta = true;
		}
	}
	if (type != NBD_REP_ACK)
		info->has_meta = false;
	return 0;
}

/* One NBD_REP_INFO of len bytes in buf into info. Returns 1 for
 * NBD_INFO_EXPORT, 0 for another, or -EPROTO for a malformed one. */
static int nbd_take_info(struct nbd_info *info, const char *buf, uint32_t len)
{
	uint16_t what;

	memcpy(&what, buf, 2);
	if (be16toh(what) == NBD_INFO_EXPORT) {
		struct nbd_info_export ie;
		if (len != sizeof(ie))
			return -EPROTO;
		memcpy(&ie, buf, sizeof(ie));
		info->size = be64toh(ie.size);
		info->flags = be16toh(ie.flags);
		return 1;
	} else if (be16toh(what) == NBD_INFO_BLOCK_SIZE) {
		struct nbd_info_block_size ib;
		if (len != sizeof(ib))
			return -EPROTO;
		memcpy(&ib, buf, sizeof(ib));
		info->min_block = be32toh(ib.minimum);
		info->preferred = be32toh(ib.preferred);
		info->max_payload = be32toh(ib.maximum);
	}
	return 0;
}

/* NBD_OPT_GO, asking for the export's size and flags and its block sizes
 * (into info), which ends the handshake. Returns 0, or -1 with the reason
 * in why. */
static int nbd_opt_go(struct nbd_source *n, int fd, struct nbd_info *info,
		      char *why, size_t size)
{
	char buf[NBD_OPTION_BUF], *end;
	uint32_t type, len, k;
	bool got_export = false;
	int r;

	end = nbd_put_string(buf, n->export_name, strlen(n->export_name));
	end = nbd_put16(end, 2);
	end = nbd_put16(end, NBD_INFO_EXPORT);
	end = nbd_put16(end, NBD_INFO_BLOCK_SIZE);
	if ((r = nbd_send_option(fd, NBD_OPT_GO, buf, end - buf)) < 0)
		return nbd_failed(r, why, size);
	for (;;) {
		if ((r = nbd_option_reply(fd, info, NBD_OPT_GO, &type, buf,
					  sizeof(buf), &len)) < 0)
			return nbd_failed(r, why, size);
		if (type == NBD_REP_ACK)
			break;
		if (type == NBD_REP_ERR_UNSUP)
			return snprintf(why, size, "the server does not know "
					"NBD_OPT_GO (too old)"), -1;
		if (type & NBD_REP_ERR) {
			/* the server's words, without the control bytes
			 * that would move a terminal or start a log line */
			for (k = 0; k < len; k++)
				if ((unsigned char)buf[k] < 0x20 || buf[k] == 0x7f)
					buf[k] = '?';
			return snprintf(why, size, "the server refused export '%s': "
					"%.*s", n->export_name, len ? (int)len : 5,
					len ? buf : "error"), -1;
		}
		if (type != NBD_REP_INFO || len < 2 ||
		    (r = nbd_take_info(info, buf, len)) < 0)
			return nbd_bad_reply(why, size);
		got_export |= r;
	}
	return got_export ? 0 : nbd_bad_reply(why, size);
}

/* The fixed newstyle handshake on fd, as the NBD protocol document has
 * it: the greeting, structured replies and base:allocation where the
 * server has them, then GO with the export's size, flags and block sizes
 * into *info. Returns 0, or -1 with the reason in why. */
static int nbd_handshake(struct nbd_source *n, int fd, struct nbd_info *info,
			 char *why, size_t size)
{
	memset(info, 0, sizeof(*info));
	info->min_block = 1;
	info->preferred = 4096;
	info->max_payload = NBD_MAX_IO;
	/* a deadline for the whole: a server that drips its bytes, or
	 * sends replies without end, holds neither the setup nor a
	 * reconnect that requests wait for */
	clock_gettime(CLOCK_MONOTONIC, &info->by);
	info->by.tv_sec += NBD_SETUP_SECONDS;
	if (nbd_greet(n, fd, info, why, size) < 0 ||
	    nbd_opt_structured(fd, info, why, size) < 0 ||
	    (info->structured && nbd_opt_meta_context(n, fd, info, why, size) < 0) ||
	    nbd_opt_go(n, fd, info, why, size) < 0)
		return -1;
	if (info->size > INT64_MAX || !info->min_block || info->min_block > 65536 ||
	    (info->min_block & (info->min_block - 1)) ||
	    info->max_payload < info->min_block)
		return snprintf(why, size, "the server gave a bad size (%llu) or "
				"block sizes (%u, %u)", (unsigned long long)info->size,
				info->min_block, info->max_payload), -1;
	return 0;
}

/* A connection to the export, handshake done. Returns the socket, or -1
 * with the reason in why. */
static int nbd_connect(struct nbd_source *n, struct nbd_info *info, char *why,
		       size_t size)
{
	struct timeval none = { 0, 0 };
	int fd = nbd_dial(n, why, size);

	if (fd < 0)
		return -1;
	if (nbd_handshake(n, fd, info, why, size) < 0) {
		close(fd);
		return -1;
	}
	/* from now on a request waits as long as the server takes */
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof(none));
	return fd;
}

/* Did a new connection agree what the first did? */
static bool nbd_same(const struct nbd_info *a, const struct nbd_info *b)
{
	const uint16_t used = NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH |
			      NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_WRITE_ZEROES |
			      NBD_FLAG_SEND_DF;

	return a->size == b->size && (a->flags & used) == (b->flags & used) &&
	       a->structured == b->structured && a->has_meta == b->has_meta &&
	       a->min_block == b->min_block && a->max_payload == b->max_payload;
}

/* The errno an NBD error value stands for */
static int nbd_errno(uint32_t error)
{
	switch (error) {
	case NBD_EPERM: return EPERM;
	case NBD_ENOMEM: return ENOMEM;
	case NBD_EINVAL: return EINVAL;
	case NBD_ENOSPC: return ENOSPC;
	case NBD_EOVERFLOW: return EOVERFLOW;
	case NBD_ENOTSUP: return EOPNOTSUPP;
	default: return EIO;
	}
}

/* Take n bytes of c's connection: from what was received before, and
 * by reading a buffer's worth at a time (large payloads straight into
 * buf), so that a reply costs one read(2), not one per field. Returns 0
 * or -errno (-ECONNRESET: the stream ended). */
static int conn_read(struct nbd_conn *c, void *buf, size_t n)
{
	size_t k = min_u64(n, c->recv_len - c->recv_pos);

	memcpy(buf, c->recv_buf + c->recv_pos, k);
	c->recv_pos += k;
	buf = (char *)buf + k;
	n -= k;
	if (!n)
		return 0;
	if (n >= NBD_RECV_BUFFER / 2)
		return read_full(c->fd, buf, n, NULL);
	c->recv_pos = c->recv_len = 0;
	while (c->recv_len < n) {
		ssize_t r = read(c->fd, c->recv_buf + c->recv_len,
				 NBD_RECV_BUFFER - c->recv_len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -ECONNRESET;
		c->recv_len += r;
	}
	memcpy(buf, c->recv_buf, n);
	c->recv_pos = n;
	return 0;
}

/* Take and drop n bytes of c's connection: 0 or -errno */
static int conn_skip(struct nbd_conn *c, uint64_t n)
{
	char buf[4096];
	int r = 0;

	while (n && r == 0) {
		size_t k = min_u64(n, sizeof(buf));
		r = conn_read(c, buf, k);
		n -= k;
	}
	return r;
}

/* The request on c sent with cookie, or NULL */
static struct nbd_cmd *nbd_find(struct nbd_conn *c, uint64_t cookie)
{
	struct nbd_cmd *cmd;

	pthread_mutex_lock(&c->lock);
	for (cmd = c->inflight; cmd; cmd = cmd->next)
		if (cmd->cookie == cookie && cmd->sent == c->generation)
			break;
	pthread_mutex_unlock(&c->lock);
	return cmd;
}

/* Wake cmd's caller, asleep or not; c->lock held */
static void nbd_wake(struct nbd_cmd *cmd)
{
	cmd->caller->waiting = false;
	pthread_cond_signal(&cmd->caller->wake);
}

/* Take cmd off c's list and wake its caller with error (0 or -errno), or
 * the error a chunk of its reply gave; c->lock held */
static void nbd_finish_locked(struct nbd_conn *c, struct nbd_cmd *cmd, int error)
{
	struct nbd_cmd **p;

	for (p = &c->inflight; *p && *p != cmd; p = &(*p)->next)
		;
	if (*p)
		*p = cmd->next;
	cmd->done = true;
	if (!cmd->error)
		cmd->error = error;
	if (!cmd->error)
		c->backoff_ms = NBD_BACKOFF_MIN_MS;	/* the server works */
	if (!cmd->error && !(cmd->flags & NBD_CMD_FLAG_FUA) &&
	    (cmd->type == NBD_CMD_WRITE || cmd->type == NBD_CMD_WRITE_ZEROES))
		atomic_fetch_add(&c->n->acked, 1);
	nbd_wake(cmd);
}

static void nbd_finish(struct nbd_conn *c, struct nbd_cmd *cmd, int error)
{
	pthread_mutex_lock(&c->lock);
	nbd_finish_locked(c, cmd, error);
	pthread_mutex_unlock(&c->lock);
}

/* Mark [start, end) of cmd's map: false if any of it was marked */
static bool nbd_cover_map(struct nbd_cmd *cmd, uint64_t start, uint64_t end)
{
	uint64_t i;

	for (i = start - cmd->offset; i < end - cmd->offset; i++)
		if (cmd->covered_map[i / 8] & (1 << i % 8))
			return false;
	for (i = start - cmd->offset; i < end - cmd->offset; i++)
		cmd->covered_map[i / 8] |= 1 << i % 8;
	return true;
}

/* Note that a READ's reply covered [start, end), inside the request.
 * Returns false if that overlaps what earlier chunks covered (or there is
 * no memory to tell). A server may send any number of chunks: past
 * NBD_MAX_PIECES stretches, a map of the request's bytes takes over. */
static bool nbd_cover(struct nbd_cmd *cmd, uint64_t start, uint64_t end)
{
	unsigned i;

	if (cmd->covered_map) {
		if (!nbd_cover_map(cmd, start, end))
			return false;
		cmd->covered += end - start;
		return true;
	}
	for (i = 0; i < cmd->npieces; i++)
		if (start < cmd->piece[i].end && cmd->piece[i].start < end)
			return false;
	cmd->covered += end - start;
	for (i = 0; i < cmd->npieces; i++) {
		if (cmd->piece[i].end == start) {
			cmd->piece[i].end = end;
			return true;
		}
		if (cmd->piece[i].start == end) {
			cmd->piece[i].start = start;
			return true;
		}
	}
	if (cmd->npieces < NBD_MAX_PIECES) {
		cmd->piece[cmd->npieces].start = start;
		cmd->piece[cmd->npieces++].end = end;
		return true;
	}
	cmd->covered_map = calloc(1, cmd->length / 8 + 1);
	if (!cmd->covered_map)
		return false;
	for (i = 0; i < cmd->npieces; i++)
		nbd_cover_map(cmd, cmd->piece[i].start, cmd->piece[i].end);
	return nbd_cover_map(cmd, start, end);
}

/* An OFFSET_DATA or OFFSET_HOLE chunk of length bytes for cmd: its data
 * goes into cmd's buffer, or, if it lies outside the request or overlaps
 * an earlier chunk, the request gets EIO. Returns 0 or -errno. */
static int nbd_read_chunk(struct nbd_conn *c, struct nbd_cmd *cmd,
			  uint16_t type, uint32_t length)
{
	struct { uint64_t offset; uint32_t hole; } __attribute__((packed)) h;
	uint64_t off;
	uint32_t n;
	int r;

	if (type == NBD_REPLY_TYPE_OFFSET_HOLE ? length != 12 : length < 9)
		return -EPROTO;
	if ((r = conn_read(c, &h, type == NBD_REPLY_TYPE_OFFSET_HOLE ? 12 : 8)) < 0)
		return r;
	off = be64toh(h.offset);
	n = type == NBD_REPLY_TYPE_OFFSET_HOLE ? be32toh(h.hole) : length - 8;
	if (cmd->type != NBD_CMD_READ || !n || off < cmd->offset ||
	    n > cmd->length || off - cmd->offset > cmd->length - n ||
	    !nbd_cover(cmd, off, off + n)) {
		cmd->error = -EIO;
		return type == NBD_REPLY_TYPE_OFFSET_DATA ? conn_skip(c, n) : 0;
	}
	if (type == NBD_REPLY_TYPE_OFFSET_HOLE) {
		memset(cmd->buf + (off - cmd->offset), 0, n);
		return 0;
	}
	return conn_read(c, cmd->buf + (off - cmd->offset), n);
}

/* A BLOCK_STATUS chunk of length bytes for cmd: its extents, one by one,
 * looked through for cmd's whence. Returns 0 or -errno. */
static int nbd_status_chunk(struct nbd_conn *c, struct nbd_cmd *cmd,
			    uint32_t length)
{
	uint32_t id, ext[2 * 64];
	bool bad;
	size_t i, k;
	int r;

	if (length < 12 || (length - 4) % 8 || length > NBD_STATUS_MAX)
		return -EPROTO;
	if ((r = conn_read(c, &id, 4)) < 0)
		return r;
	bad = cmd->type != NBD_CMD_BLOCK_STATUS || be32toh(id) != c->meta_id ||
	      cmd->got_status;
	cmd->got_status = true;
	for (length -= 4; length; length -= k * 8) {
		k = min_u64(length / 8, 64);
		if ((r = conn_read(c, ext, k * 8)) < 0)
			return r;
		for (i = 0; i < k && !bad; i++) {
			uint64_t start = cmd->status_end, len = be32toh(ext[2 * i]);
			bool hole = be32toh(ext[2 * i + 1]) & NBD_STATE_HOLE;

			bad = !len;
			cmd->status_end = start + len;
			if (cmd->found == UINT64_MAX && start + len > cmd->from &&
			    hole == (cmd->whence == SEEK_HOLE))
				cmd->found = start > cmd->from ? start : cmd->from;
		}
	}
	if (bad)
		cmd->error = -EIO;
	return 0;
}

/* An error chunk of length bytes: cmd gets its error. Returns 0 or -errno
 * (-ESHUTDOWN: the server is going away). */
static int nbd_error_chunk(struct nbd_conn *c, struct nbd_cmd *cmd,
			   uint32_t length)
{
	char buf[6 + NBD_MAX_STRING + 8];
	uint32_t error;
	uint16_t msg_len;
	int r;

	if (length < 6 || length > sizeof(buf))
		return -EPROTO;
	if ((r = conn_read(c, buf, length)) < 0)
		return r;
	memcpy(&error, buf, 4);
	memcpy(&msg_len, buf + 4, 2);
	error = be32toh(error);
	if (be16toh(msg_len) > length - 6)
		return -EPROTO;
	if (error == NBD_ESHUTDOWN)
		return -ESHUTDOWN;
	cmd->error = -nbd_errno(error);
	return 0;
}

/* A simple reply to the request it answers, with a READ's data, which
 * follows it. Returns 0, or -errno when the connection can no longer be
 * trusted or read. */
static int nbd_take_simple(struct nbd_conn *c,
			   const struct nbd_simple_reply *simple)
{
	uint32_t error = be32toh(simple->error);
	struct nbd_cmd *cmd = nbd_find(c, be64toh(simple->cookie));
	int r;

	/* a READ's data follows only a simple reply: after one that
	 * should not be there, nothing can be trusted */
	if (!cmd || (cmd->type == NBD_CMD_READ && c->n->info.structured))
		return -EPROTO;
	if (error == NBD_ESHUTDOWN)
		return -ESHUTDOWN;
	if (!error && cmd->type == NBD_CMD_READ &&
	    (r = conn_read(c, cmd->buf, cmd->length)) < 0)
		return r;
	if (!error && cmd->type == NBD_CMD_BLOCK_STATUS)
		error = NBD_EIO;	/* its extents come only in chunks */
	nbd_finish(c, cmd, error ? -nbd_errno(error) : 0);
	return 0;
}

/* A structured reply's chunk, its header in *chunk, with its payload, to
 * the request it answers; the last chunk completes the request. Returns
 * 0, or -errno when the connection can no longer be trusted or read. */
static int nbd_take_chunk(struct nbd_conn *c,
			  const struct nbd_structured_reply *chunk)
{
	uint16_t flags = be16toh(chunk->flags), type = be16toh(chunk->type);
	uint32_t length = be32toh(chunk->length);
	struct nbd_cmd *cmd = nbd_find(c, be64toh(chunk->cookie));
	int r;

	if (!cmd)
		return -EPROTO;
	if (type & NBD_REPLY_TYPE_ERROR_BIT)
		r = nbd_error_chunk(c, cmd, length);
	else if (type == NBD_REPLY_TYPE_NONE)
		r = length ? -EPROTO : 0;
	else if (type == NBD_REPLY_TYPE_OFFSET_DATA || type == NBD_REPLY_TYPE_OFFSET_HOLE)
		r = length > c->n->max_io + 8 ? -EPROTO :
		    nbd_read_chunk(c, cmd, type, length);
	else if (type == NBD_REPLY_TYPE_BLOCK_STATUS)
		r = nbd_status_chunk(c, cmd, length);
	else
		r = -EPROTO;
	if (r < 0)
		return r;
	if (!(flags & NBD_REPLY_FLAG_DONE)) {
		if (type == NBD_REPLY_TYPE_NONE)
			cmd->error = -EIO;	/* NONE is always the last */
		return 0;
	}
	/* complete: a READ must have had every byte, a BLOCK_STATUS its
	 * extents; the pieces are disjoint and inside the request */
	if (cmd->type == NBD_CMD_READ && cmd->covered != cmd->length)
		r = -EIO;
	if (cmd->type == NBD_CMD_BLOCK_STATUS && !cmd->got_status)
		r = -EIO;
	nbd_finish(c, cmd, r);
	return 0;
}

/* Read one reply, or one chunk of a structured reply, from c's connection
 * and give it to the request it answers, waking that request's caller
 * once its reply is complete. Everything is checked: a reply that answers
 * no request in flight, or whose length cannot be trusted, makes the
 * connection unusable; a chunk a request cannot get (the wrong type,
 * outside it, overlapping another) gives that request EIO. Returns 0, or
 * -errno when the connection can no longer be trusted or read (then it
 * is dropped, and what was in flight is sent again on the next). */
static int nbd_take_reply(struct nbd_conn *c)
{
	union {
		struct nbd_simple_reply simple;
		struct nbd_structured_reply chunk;
	} u;
	int r;

	/* a simple reply's header is the shorter: its magic tells which */
	if ((r = conn_read(c, &u, sizeof(u.simple))) < 0)
		return r;
	if (be32toh(u.simple.magic) == NBD_SIMPLE_REPLY_MAGIC)
		return nbd_take_simple(c, &u.simple);
	if (be32toh(u.chunk.magic) != NBD_STRUCTURED_REPLY_MAGIC ||
	    !c->n->info.structured)
		return -EPROTO;
	if ((r = conn_read(c, (char *)&u + sizeof(u.simple),
			   sizeof(u.chunk) - sizeof(u.simple))) < 0)
		return r;
	return nbd_take_chunk(c, &u.chunk);
}

/* Is the outage to be said: does it go from what was said last to
 * state (0 over, 1 a connection lost, 2 --retry ran out)? A loss is
 * said once however many connections see it. */
static bool nbd_outage(struct nbd_source *n, int state)
{
	int was = atomic_load(&n->outage);

	do {
		if (state == 1 ? was != 0 : state == 2 ? was != 1 : was == 0)
			return false;
	} while (!atomic_compare_exchange_weak(&n->outage, &was, state));
	return true;
}

/* Drop c's connection after err (the caller holds the receive role):
 * every request in flight waits for the next, or for --retry to run out */
static void nbd_drop(struct nbd_conn *c, int err)
{
	struct nbd_source *n = c->n;
	struct nbd_cmd *cmd;

	shutdown(c->fd, SHUT_RDWR);	/* a sender blocked on it lets go */
	/* writes acknowledged and not yet flushed may be gone with the
	 * server (every connection's: a flush covers them all) */
	if ((n->info.flags & NBD_FLAG_SEND_FLUSH) &&
	    atomic_load(&n->acked) != atomic_load(&n->flushed))
		atomic_compare_exchange_strong(&n->unflushed_lost, &(int){ 0 }, 1);
	pthread_mutex_lock(&c->send_lock);
	pthread_mutex_lock(&c->lock);
	close(c->fd);
	c->fd = -1;
	c->recv_pos = c->recv_len = 0;
	clock_gettime(CLOCK_MONOTONIC, &c->down_since);
	for (cmd = c->inflight; cmd; cmd = cmd->next)
		nbd_wake(cmd);
	pthread_mutex_unlock(&c->lock);
	pthread_mutex_unlock(&c->send_lock);
	if (n->debug)
		fprintf(stderr, "fuseexport: %s: connection %u lost (%s); "
			"reconnecting, requests wait up to %u s\n", n->uri,
			c->index, err == -EPROTO ? "a reply that cannot be trusted" :
			strerror(-err), n->retry);
	if (nbd_outage(n, 1))
		fprintf(stderr, "fuseexport: %s: the connection to the server was "
			"lost (%s); reconnecting: requests wait up to %u s "
			"(--retry)\n", n->uri, err == -EPROTO ?
			"a reply that cannot be trusted" : strerror(-err), n->retry);
}

/* Has the time --retry gives c's lost connection run out? Its end goes
 * to *deadline. c->lock held. */
static bool nbd_expired(struct nbd_conn *c, struct timespec *deadline)
{
	struct timespec now;

	*deadline = c->down_since;
	deadline->tv_sec += c->n->retry;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec > deadline->tv_sec ||
	       (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

/* Make c's connection again (the caller holds the receive role): at once,
 * then with backoff until --retry runs out; the requests in flight are
 * then sent again by their callers. Returns 0, or -EIO if it ran out. */
static int nbd_reconnect(struct nbd_conn *c)
{
	struct nbd_source *n = c->n;
	struct timespec deadline, pause;
	struct nbd_info info;
	struct nbd_cmd *cmd;
	char why[512];
	unsigned ms;
	bool expired;
	int fd;

	for (;;) {
		fd = nbd_connect(n, &info, why, sizeof(why));
		if (fd >= 0 && !nbd_same(&info, &n->info)) {
			close(fd);
			fd = -1;
			snprintf(why, sizeof(why), "the export changed (its size, "
				 "flags or block sizes)");
		}
		if (fd >= 0)
			break;
		if (n->debug)
			fprintf(stderr, "fuseexport: %s: reconnecting connection "
				"%u: %s\n", n->uri, c->index, why);
		pthread_mutex_lock(&c->lock);
		expired = nbd_expired(c, &deadline);
		ms = c->backoff_ms;
		c->backoff_ms = min_u64(2 * ms, NBD_BACKOFF_MAX_MS);
		pthread_mutex_unlock(&c->lock);
		if (expired) {
			if (nbd_outage(n, 2))
				fprintf(stderr, "fuseexport: %s: the server is still "
					"unreachable after %u s (%s): requests fail "
					"with EIO until it is back\n", n->uri,
					n->retry, why);
			return -EIO;
		}
		pause = (struct timespec){ ms / 1000, ms % 1000 * 1000000L };
		nanosleep(&pause, NULL);
	}
	pthread_mutex_lock(&c->send_lock);
	pthread_mutex_lock(&c->lock);
	c->fd = fd;
	c->meta_id = info.meta_id;
	c->generation++;
	for (cmd = c->inflight; cmd; cmd = cmd->next)
		nbd_wake(cmd);
	pthread_mutex_unlock(&c->lock);
	pthread_mutex_unlock(&c->send_lock);
	if (n->debug)
		fprintf(stderr, "fuseexport: %s: connection %u made again\n",
			n->uri, c->index);
	if (nbd_outage(n, 0))
		fprintf(stderr, "fuseexport: %s: the connection to the server is "
			"back\n", n->uri);
	if (n->reconnected)
		n->reconnected(n->reconnected_arg);
	return 0;
}

/* The receive role leaves its holder (c->lock held): it goes to a caller
 * asleep on its request, who wakes holding it, or is left free for the
 * next caller to take before it sleeps. Returns false, and the holder
 * keeps it, while a request is being sent on a live connection and
 * nobody sleeps: its sender may be blocked until the replies before it
 * are read, and nobody else would read them. */
static bool nbd_leave_role(struct nbd_conn *c)
{
	struct nbd_cmd *other;
	bool sending = false;

	for (other = c->inflight; other; other = other->next) {
		if (other->caller->waiting) {
			c->receiver = other->caller;
			nbd_wake(other);
			return true;
		}
		sending |= other->sending;
	}
	if (sending && c->fd >= 0)
		return false;
	c->receiver = NULL;
	return true;
}

/* Does any of the count requests at cmd still need the receive role:
 * not done, and sent on c's connection or waiting for it to be made
 * again? c->lock held. */
static bool nbd_awaited(struct nbd_conn *c, struct nbd_cmd *cmd, unsigned count)
{
	unsigned i;

	for (i = 0; i < count; i++)
		if (!cmd[i].done && (c->fd < 0 || cmd[i].sent == c->generation))
			return true;
	return false;
}

/* With c's receive role, until the replies to the count requests at cmd
 * are in (or they are to be sent again) and the role can be left: take
 * every reply that comes, waking the requests they answer, and make the
 * connection again when it drops. Returns 0, or -EIO when --retry ran
 * out; the role is left either way. */
static int nbd_receive(struct nbd_conn *c, struct nbd_cmd *cmd, unsigned count)
{
	int r = 0, err;

	pthread_mutex_lock(&c->lock);
	while ((r == 0 && nbd_awaited(c, cmd, count)) || !nbd_leave_role(c)) {
		bool down = c->fd < 0;

		pthread_mutex_unlock(&c->lock);
		if (down)
			r = nbd_reconnect(c);
		else if ((err = nbd_take_reply(c)) < 0)
			nbd_drop(c, err);
		pthread_mutex_lock(&c->lock);
	}
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* Put the count requests at cmd on the wire, those not there already,
 * in one go: all of them count as being sent until the last is out, so
 * that the receive role stays held meanwhile (nbd_leave_role). The send
 * lock keeps the connection from changing. A failed send shuts the
 * connection; the receive role, seeing it fail, makes it again. */
static void nbd_send(struct nbd_conn *c, struct nbd_cmd *cmd, unsigned count)
{
	struct nbd_request req[NBD_MAX_BATCH];
	struct iovec iov[2 * NBD_MAX_BATCH];
	unsigned i, k = 0, sent = 0;
	int fd;

	pthread_mutex_lock(&c->send_lock);
	pthread_mutex_lock(&c->lock);
	fd = c->fd;
	for (i = 0; i < count && fd >= 0; i++) {
		if (cmd[i].done || cmd[i].sent == c->generation)
			continue;
		if (cmd[i].sends++ == NBD_MAX_SENDS) {
			nbd_finish_locked(c, &cmd[i], -EIO);	/* never answered */
			continue;
		}
		cmd[i].sent = c->generation;
		cmd[i].sending = true;
		cmd[i].cookie = ++c->next_cookie;
		cmd[i].error = 0;
		cmd[i].npieces = 0;
		cmd[i].covered = 0;
		free(cmd[i].covered_map);
		cmd[i].covered_map = NULL;
		cmd[i].got_status = false;
		cmd[i].found = UINT64_MAX;
		cmd[i].status_end = cmd[i].offset;
		req[sent] = (struct nbd_request){
			.magic = htobe32(NBD_REQUEST_MAGIC),
			.flags = htobe16(cmd[i].flags),
			.type = htobe16(cmd[i].type),
			.cookie = htobe64(cmd[i].cookie),
			.offset = htobe64(cmd[i].offset),
			.length = htobe32(cmd[i].length),
		};
		iov[k++] = (struct iovec){ &req[sent++], sizeof(req[0]) };
		if (cmd[i].type == NBD_CMD_WRITE)
			iov[k++] = (struct iovec){ cmd[i].buf, cmd[i].length };
	}
	pthread_mutex_unlock(&c->lock);
	if (sent) {
		if (send_iov(fd, iov, k) < 0)
			shutdown(fd, SHUT_RDWR);
		pthread_mutex_lock(&c->lock);
		for (i = 0; i < count; i++)
			cmd[i].sending = false;
		pthread_mutex_unlock(&c->lock);
	}
	pthread_mutex_unlock(&c->send_lock);
}

/* Run the count requests at cmd on the next connection: send them
 * (again after every reconnect), all at once, so that the server works on
 * them together, and wait for their replies. The callers of a connection
 * take turns in its receive role: one at a time reads the replies for
 * all, so that a lone request is answered without waking another thread,
 * and hands the role on when its own replies are in. A caller takes the
 * role whenever it finds it free, before it would sleep, and wakes holding
 * it when it is handed on, so that the role cannot be lost whoever is
 * sending, sleeping or finishing. Returns 0 or the first request's -errno:
 * -EIO once the connection has been down for longer than --retry. */
static int nbd_run(struct nbd_source *n, struct nbd_cmd *cmd, unsigned count)
{
	struct nbd_conn *c = &n->conn[atomic_fetch_add(&n->next_conn, 1) % n->nconns];
	struct nbd_caller me = { .waiting = false };
	struct timespec deadline;
	unsigned i;
	int r = 0;

	pthread_cond_init(&me.wake, &n->monotonic);
	pthread_mutex_lock(&c->lock);
	for (i = 0; i < count; i++) {
		cmd[i].caller = &me;
		cmd[i].done = cmd[i].sending = false;
		cmd[i].sent = cmd[i].sends = 0;
		cmd[i].next = c->inflight;
		c->inflight = &cmd[i];
	}
	for (;;) {
		bool unsent = false, pending = false;

		if (c->receiver == &me) {	/* taken, or handed to us */
			pthread_mutex_unlock(&c->lock);
			r = nbd_receive(c, cmd, count);
			pthread_mutex_lock(&c->lock);
		}
		for (i = 0; i < count; i++) {
			pending |= !cmd[i].done;
			unsent |= !cmd[i].done && cmd[i].sent != c->generation;
		}
		if (!pending || r < 0)
			break;
		if (c->fd >= 0 && unsent) {
			pthread_mutex_unlock(&c->lock);
			nbd_send(c, cmd, count);
			pthread_mutex_lock(&c->lock);
		} else if (!c->receiver) {
			c->receiver = &me;
		} else if (c->fd >= 0) {
			me.waiting = true;
			pthread_cond_wait(&me.wake, &c->lock);
			me.waiting = false;
		} else if (nbd_expired(c, &deadline)) {
			r = -EIO;
		} else {
			me.waiting = true;
			pthread_cond_timedwait(&me.wake, &c->lock, &deadline);
			me.waiting = false;
		}
	}
	for (i = 0; i < count; i++)
		if (!cmd[i].done)
			nbd_finish_locked(c, &cmd[i], r);
	pthread_mutex_unlock(&c->lock);
	pthread_cond_destroy(&me.wake);
	for (i = 0; i < count; i++) {
		free(cmd[i].covered_map);
		cmd[i].covered_map = NULL;
	}
	for (i = 0, r = 0; i < count && r == 0; i++)
		r = cmd[i].error;
	return r;
}

/* One command: 0 or -errno */
static int nbd_command(struct nbd_source *n, uint16_t type, uint16_t flags,
		       uint64_t pos, uint32_t len, void *buf)
{
	struct nbd_cmd cmd = { .type = type, .flags = flags, .offset = pos,
			       .length = len, .buf = buf };

	return nbd_run(n, &cmd, 1);
}

/* A READ or WRITE of len bytes (whole blocks of the server's minimum
 * size, or up to the export's end) as requests of n->request_size bytes,
 * up to NBD_MAX_BATCH of them in flight at once. Returns 0 or -errno. */
static int nbd_transfer(struct nbd_source *n, uint16_t type, uint16_t flags,
			uint64_t pos, uint64_t len, char *buf)
{
	struct nbd_cmd cmd[NBD_MAX_BATCH];
	uint32_t size = n->request_size;
	unsigned count;
	int r = 0;

	while (len && r == 0) {
		for (count = 0; len && count < NBD_MAX_BATCH; count++) {
			uint32_t k = min_u64(len, size);

			cmd[count] = (struct nbd_cmd){ .type = type, .offset = pos,
						       .length = k, .buf = buf,
						       .flags = flags };
			pos += k;
			buf += k;
			len -= k;
		}
		r = nbd_run(n, cmd, count);
	}
	return r;
}

/* Writes that read-modify-write a ragged block exclude every other
 * write; the rest only exclude those (no lock at all where the server
 * takes any byte alone) */
static void nbd_lock(struct nbd_source *n, bool exclusive)
{
	if (n->info.min_block == 1)
		return;
	if (exclusive)
		pthread_rwlock_wrlock(&n->rmw_lock);
	else
		pthread_rwlock_rdlock(&n->rmw_lock);
}

static void nbd_unlock(struct nbd_source *n)
{
	if (n->info.min_block > 1)
		pthread_rwlock_unlock(&n->rmw_lock);
}

static uint64_t nbd_size(struct source *s)
{
	return nbd_of(s)->info.size;
}

/* The bytes are on the server: READ replies are read, never mapped */
static const char *nbd_map(struct source *s, uint64_t pos, uint64_t n)
{
	(void)s, (void)pos, (void)n;
	return NULL;
}

/* The block of the server's minimum size at start (cut at the end of the
 * export) into a new buffer whose length goes to *len. Returns the buffer,
 * or NULL with -errno in *err. */
static char *nbd_read_block(struct nbd_source *n, uint64_t start, uint32_t *len,
			    int *err)
{
	char *block = malloc(n->info.min_block);

	*len = min_u64(n->info.min_block, n->info.size - start);
	*err = block ? nbd_command(n, NBD_CMD_READ, 0, start, *len, block) : -ENOMEM;
	if (*err < 0) {
		free(block);
		return NULL;
	}
	return block;
}

/* Is the stretch from pos to pos + n ragged: not whole blocks of the
 * server's minimum size (the export's end counts as a block's end)? */
static bool nbd_ragged(struct nbd_source *n, uint64_t pos, uint64_t len)
{
	uint64_t mask = n->info.min_block - 1;

	return (pos & mask) || (len < n->info.min_block && pos + len != n->info.size);
}

/* Requests of at most max_io bytes, whole blocks of the server's minimum
 * size, the ragged ends read through a block of their own */
static ssize_t nbd_read(struct source *s, void *buf, size_t len, uint64_t pos)
{
	struct nbd_source *n = nbd_of(s);
	uint64_t mask = n->info.min_block - 1;
	size_t done = 0;
	int r;

	if (pos >= n->info.size)
		return 0;
	len = min_u64(len, n->info.size - pos);
	while (done < len) {
		uint64_t at = pos + done, k = len - done;

		if (nbd_ragged(n, at, k)) {
			uint32_t blen;
			char *block = nbd_read_block(n, at & ~mask, &blen, &r);

			if (!block)
				return r;
			k = min_u64(k, blen - (at & mask));
			memcpy((char *)buf + done, block + (at & mask), k);
			free(block);
		} else {
			if (at + k != n->info.size)
				k &= ~mask;
			r = nbd_transfer(n, NBD_CMD_READ, n->read_flags, at, k,
					 (char *)buf + done);
			if (r < 0)
				return r;
		}
		done += k;
	}
	return done;
}

/* FLUSH, where the server has a cache to flush: 0 or -errno. Once a
 * connection dropped while writes were acknowledged and not yet flushed,
 * every flush fails with EIO: a server that restarted lost what its cache
 * held, and the reconnect cannot tell whether it did. */
static int nbd_flush(struct source *s, bool datasync)
{
	struct nbd_source *n = nbd_of(s);
	uint64_t acked = atomic_load(&n->acked);
	uint64_t was = atomic_load(&n->flushed);
	int r;

	(void)datasync;
	if (!(n->info.flags & NBD_FLAG_SEND_FLUSH))
		return 0;		/* the server writes through */
	r = nbd_command(n, NBD_CMD_FLUSH, 0, 0, 0, NULL);
	while (r == 0 && was < acked &&
	       !atomic_compare_exchange_weak(&n->flushed, &was, acked))
		;
	if (atomic_load(&n->unflushed_lost)) {
		if (atomic_exchange(&n->unflushed_lost, 2) == 1)
			fprintf(stderr, "fuseexport: %s: a connection was lost "
				"while writes the server acknowledged were not yet "
				"flushed, which a server that restarted has lost: "
				"flushes fail with EIO\n", n->uri);
		return -EIO;
	}
	return r;
}

/* As nbd_read, a ragged block read, changed and written back whole. FUA:
 * every WRITE carries NBD_CMD_FLAG_FUA where the server takes it, else a
 * FLUSH follows them. */
static ssize_t nbd_write(struct source *s, const void *buf, size_t len,
			 uint64_t pos, unsigned flags)
{
	struct nbd_source *n = nbd_of(s);
	uint64_t mask = n->info.min_block - 1;
	bool fua = flags & WRITE_FUA, rmw;
	uint16_t cmd_flags = fua && (n->info.flags & NBD_FLAG_SEND_FUA) ?
			     NBD_CMD_FLAG_FUA : 0;
	size_t done = 0;
	int r = 0;

	if (len && pos >= n->info.size)
		return -ENOSPC;
	len = min_u64(len, n->info.size - pos);
	rmw = (pos & mask) || (((pos + len) & mask) && pos + len != n->info.size);
	nbd_lock(n, rmw);
	while (done < len && r == 0) {
		uint64_t at = pos + done, k = len - done;

		if (nbd_ragged(n, at, k)) {
			uint32_t blen;
			char *block = nbd_read_block(n, at & ~mask, &blen, &r);

			if (!block)
				break;
			k = min_u64(k, blen - (at & mask));
			memcpy(block + (at & mask), (const char *)buf + done, k);
			r = nbd_command(n, NBD_CMD_WRITE, cmd_flags, at & ~mask,
					blen, block);
			free(block);
		} else {
			if (at + k != n->info.size)
				k &= ~mask;
			r = nbd_transfer(n, NBD_CMD_WRITE, cmd_flags, at, k,
					 (char *)buf + done);
		}
		done += k;
	}
	nbd_unlock(n);
	if (r == 0 && fua && !cmd_flags)
		r = nbd_flush(s, true);
	return r < 0 ? r : (ssize_t)done;
}

/* Make len bytes at pos read as zeros: WRITE_ZEROES where the server has
 * it (NO_HOLE unless punch: without it the server may punch a hole), at
 * most its maximum block size (or 32 MiB) at once, else written zeros;
 * a server that refuses WRITE_ZEROES (EINVAL, ENOTSUP) gets written zeros
 * from then on. Ragged block ends are written through nbd_write. (TRIM
 * is never used: after one the bytes are the server's to choose.)
 * Returns 0 or -errno. */
static int nbd_zero_range(struct nbd_source *n, uint64_t pos, uint64_t len,
			  bool punch)
{
	uint64_t mask = n->info.min_block - 1, head, tail;
	int r = 0;

	if (pos >= n->info.size)
		return 0;
	len = min_u64(len, n->info.size - pos);
	head = min_u64(len, (n->info.min_block - (pos & mask)) & mask);
	tail = pos + len == n->info.size ? 0 : (pos + len) & mask;
	tail = head + tail > len ? len - head : tail;
	if (head && (r = nbd_write(&n->s, n->zeros, head, pos, 0)) < 0)
		return r;
	if (tail && (r = nbd_write(&n->s, n->zeros, tail, pos + len - tail, 0)) < 0)
		return r;
	r = 0;
	pos += head;
	len -= head + tail;
	nbd_lock(n, false);
	while (len && r == 0) {
		uint64_t k;

		k = min_u64(len, n->max_io);
		r = -EOPNOTSUPP;
		if ((n->info.flags & NBD_FLAG_SEND_WRITE_ZEROES) &&
		    !atomic_load(&n->zeroes_refused)) {
			r = nbd_command(n, NBD_CMD_WRITE_ZEROES,
					punch ? 0 : NBD_CMD_FLAG_NO_HOLE, pos, k, NULL);
			if (r == -EINVAL || r == -EOPNOTSUPP)
				atomic_store(&n->zeroes_refused, true);
		}
		if (r == -EINVAL || r == -EOPNOTSUPP)
			r = nbd_transfer(n, NBD_CMD_WRITE, 0, pos, k, (char *)n->zeros);
		pos += k;
		len -= k;
	}
	nbd_unlock(n);
	return r;
}

static int nbd_punch(struct source *s, uint64_t pos, uint64_t len)
{
	return nbd_zero_range(nbd_of(s), pos, len, true);
}

static int nbd_zero(struct source *s, uint64_t pos, uint64_t len)
{
	return nbd_zero_range(nbd_of(s), pos, len, false);
}

/* An NBD export's space is the server's: there is nothing to reserve */
static int nbd_allocate(struct source *s, uint64_t pos, uint64_t len,
			bool keep_size)
{
	return keep_size || pos + len <= nbd_size(s) ? 0 : -ENOSPC;
}

/* SEEK_DATA and SEEK_HOLE from base:allocation's extents, asked for a
 * GiB at a time; without the context every byte is data */
static int64_t nbd_seek(struct source *s, uint64_t pos, int whence)
{
	struct nbd_source *n = nbd_of(s);
	uint64_t size = n->info.size, mask = n->info.min_block - 1;
	int r;

	if (pos >= size)
		return -ENXIO;
	if (!n->info.has_meta)
		return whence == SEEK_DATA ? (int64_t)pos : (int64_t)size;
	while (pos < size) {
		uint64_t start = pos & ~mask;
		struct nbd_cmd cmd = { .type = NBD_CMD_BLOCK_STATUS, .offset = start,
				       .length = min_u64(size - start, 1U << 30),
				       .whence = whence, .from = pos };

		if ((r = nbd_run(n, &cmd, 1)) < 0)
			return r;
		if (cmd.found != UINT64_MAX)
			return cmd.found >= size && whence == SEEK_DATA ? -ENXIO :
			       (int64_t)min_u64(cmd.found, size);
		if (cmd.status_end <= pos)
			return -EIO;	/* no progress: the server says nothing */
		pos = cmd.status_end;
	}
	return whence == SEEK_DATA ? -ENXIO : (int64_t)size;
}

static int nbd_space(struct source *s, struct space *sp)
{
	memset(sp, 0, sizeof(*sp));
	sp->allocated = nbd_size(s);
	return 0;
}

/* An NBD export proves nothing: its server may serve other clients,
 * which write it unseen */
static bool nbd_stamp(struct source *s, struct stamp *st)
{
	(void)s, (void)st;
	return false;
}

/* The kernel caches the pages: this side keeps no copy of them anyway */
static void nbd_keep_no_copy(struct source *s)
{
	(void)s;
}

/* Say goodbye (NBD_CMD_DISC) on every connection and let go of them */
static void nbd_close(struct source *s)
{
	struct nbd_source *n = nbd_of(s);
	struct nbd_request disc = { htobe32(NBD_REQUEST_MAGIC), 0,
				    htobe16(NBD_CMD_DISC), 0, 0, 0 };
	unsigned i;

	for (i = 0; i < n->nconns; i++) {
		struct nbd_conn *c = &n->conn[i];

		if (c->fd >= 0) {
			send_full(c->fd, &disc, sizeof(disc), NULL, 0);
			close(c->fd);
		}
		free(c->recv_buf);
	}
	munmap((void *)n->zeros, n->max_io);
	free(n->conn);
	free(n->host);
	free(n->port);
	free(n->socket_path);
	free(n->export_name);
	free(n);
}

static void nbd_init_conn(struct nbd_source *n, struct nbd_conn *c,
			  unsigned index, int fd, uint32_t meta_id)
{
	c->n = n;
	c->index = index;
	c->fd = fd;
	c->meta_id = meta_id;
	c->generation = 1;
	c->backoff_ms = NBD_BACKOFF_MIN_MS;
	c->recv_buf = malloc(NBD_RECV_BUFFER);
	if (!c->recv_buf)
		die("out of memory:");
	pthread_mutex_init(&c->send_lock, NULL);
	pthread_mutex_init(&c->lock, NULL);
}

/* Is path an NBD URI rather than a file? */
static bool is_nbd_uri(const char *path)
{
	return !strncmp(path, "nbd://", 6) || !strncmp(path, "nbd+unix://", 11) ||
	       !strncmp(path, "nbds://", 7) || !strncmp(path, "nbds+unix://", 12);
}

/* st_blksize for an export of info: the server's preferred block size
 * (4096 if it gave none or not a power of two), at least its minimum and
 * 512 bytes, at most NBD_IO_SIZE_MAX */
static unsigned nbd_io_size(const struct nbd_info *info)
{
	unsigned io_size = info->preferred;

	if (!io_size || (io_size & (io_size - 1)))
		io_size = 4096;
	io_size = io_size < info->min_block ? info->min_block : io_size;
	return io_size < 512 ? 512 : min_u64(io_size, NBD_IO_SIZE_MAX);
}

/* n's connections: fd, the first, and up to queues in all where the
 * server allows more than one, each offering the same export. Exits on
 * failure. */
static void nbd_open_conns(struct nbd_source *n, int fd, unsigned queues)
{
	struct nbd_info info;
	char why[512];
	unsigned i;

	n->nconns = n->info.flags & NBD_FLAG_CAN_MULTI_CONN ?
		    min_u64(queues ? queues : 1, NBD_MAX_CONNS) : 1;
	n->conn = calloc(n->nconns, sizeof(*n->conn));
	if (!n->conn)
		die("out of memory:");
	nbd_init_conn(n, &n->conn[0], 0, fd, n->info.meta_id);
	for (i = 1; i < n->nconns; i++) {
		fd = nbd_connect(n, &info, why, sizeof(why));
		if (fd < 0)
			die("%s: connection %u: %s", n->uri, i, why);
		if (!nbd_same(&info, &n->info))
			die("%s: connection %u: the server offers a different export",
			    n->uri, i);
		nbd_init_conn(n, &n->conn[i], i, fd, info.meta_id);
	}
}

/* Connect to the export uri names, with up to queues connections where
 * the server allows more than one. Exits on failure. */
static struct source *nbd_open(const char *uri, bool writable, bool growable,
			       unsigned queues, unsigned retry, bool debug)
{
	struct nbd_source *n = calloc(1, sizeof(*n));
	char why[512];
	void *zeros;
	int fd;

	if (!n)
		die("out of memory:");
	n->uri = uri;
	n->retry = retry;
	n->debug = debug;
	n->setup = true;
	nbd_parse_uri(n, uri);
	if (growable)
		die("%s: --growable needs a regular file; an NBD export keeps "
		    "its size", uri);
	fd = nbd_connect(n, &n->info, why, sizeof(why));
	if (fd < 0)
		die("%s: %s", uri, why);
	if (writable && (n->info.flags & NBD_FLAG_READ_ONLY))
		die("%s: the server exports it read-only: -w refused", uri);
	n->max_io = min_u64(n->info.max_payload, NBD_MAX_IO) & ~(n->info.min_block - 1);
	n->request_size = min_u64(n->max_io, NBD_REQUEST_SIZE > n->info.min_block ?
				  NBD_REQUEST_SIZE : n->info.min_block);
	if (n->info.flags & NBD_FLAG_SEND_DF)
		n->read_flags = NBD_CMD_FLAG_DF;
	zeros = mmap(NULL, n->max_io, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (zeros == MAP_FAILED)
		die("out of memory:");
	n->zeros = zeros;
	pthread_rwlock_init(&n->rmw_lock, NULL);
	pthread_condattr_init(&n->monotonic);
	pthread_condattr_setclock(&n->monotonic, CLOCK_MONOTONIC);
	nbd_open_conns(n, fd, queues);
	n->setup = false;
	if (debug)
		fprintf(stderr, "fuseexport: %s: %llu bytes%s, %u connection%s, "
			"structured replies %s, base:allocation %s, block sizes "
			"%u to %u (preferred %u), FUA %s\n", uri,
			(unsigned long long)n->info.size,
			n->info.flags & NBD_FLAG_READ_ONLY ? " read-only" : "",
			n->nconns, n->nconns > 1 ? "s" : "",
			n->info.structured ? "on" : "off",
			n->info.has_meta ? "on" : "off", n->info.min_block, n->max_io,
			n->info.preferred,
			n->info.flags & NBD_FLAG_SEND_FUA ? "on" : "off");

	n->s = (struct source){
		.writable = writable, .passthrough_fd = -1,
		.no_passthrough = "the bytes are on an NBD server",
		.sector_size = 512, .io_size = nbd_io_size(&n->info),
		.size = nbd_size, .read = nbd_read, .map = nbd_map,
		.write = nbd_write, .flush = nbd_flush, .punch = nbd_punch,
		.zero = nbd_zero, .allocate = nbd_allocate, .seek = nbd_seek,
		.resize = no_resize, .space = nbd_space,
		.keep_no_copy = nbd_keep_no_copy, .stamp = nbd_stamp,
		.close = nbd_close,
	};
	return &n->s;
}

/* The test harness's entry to the reply parser: see fuseexport.h */
int fuseexport_nbd_replies(int fd, int structured)
{
	struct nbd_source n = { .max_io = 1 << 20 };
	struct nbd_conn c = { .n = &n, .fd = fd, .meta_id = 1, .generation = 1,
			      .recv_buf = malloc(NBD_RECV_BUFFER) };
	struct nbd_caller caller = { .waiting = false };
	char *big = malloc(65536), *one = malloc(1), *data = calloc(1, 512);
	struct nbd_cmd cmd[5] = {
		{ .type = NBD_CMD_READ, .offset = 4096, .length = 65536, .buf = big },
		{ .type = NBD_CMD_READ, .offset = 0, .length = 1, .buf = one },
		{ .type = NBD_CMD_WRITE, .offset = 0, .length = 512, .buf = data },
		{ .type = NBD_CMD_FLUSH },
		{ .type = NBD_CMD_BLOCK_STATUS, .offset = 0, .length = 1 << 20,
		  .whence = SEEK_HOLE, .from = 1000 },
	};
	int i, answered = 0;

	if (!big || !one || !data || !c.recv_buf)
		die("out of memory:");
	n.info.structured = structured;
	n.info.has_meta = true;
	n.info.min_block = 1;
	pthread_mutex_init(&c.lock, NULL);
	pthread_cond_init(&caller.wake, NULL);
	for (i = 0; i < 5; i++) {
		cmd[i].caller = &caller;
		cmd[i].cookie = i + 1;
		cmd[i].sent = 1;
		cmd[i].found = UINT64_MAX;
		cmd[i].status_end = cmd[i].offset;
		cmd[i].next = c.inflight;
		c.inflight = &cmd[i];
	}
	while (nbd_take_reply(&c) == 0)
		;
	for (i = 0; i < 5; i++) {
		answered += cmd[i].done;
		free(cmd[i].covered_map);
	}
	pthread_cond_destroy(&caller.wake);
	pthread_mutex_destroy(&c.lock);
	free(big);
	free(one);
	free(data);
	free(c.recv_buf);
	return answered;
}

/* The URI parser's entry for a fuzzer: see fuseexport.h */
int fuseexport_fuzz_uri(const char *uri)
{
	struct nbd_source *volatile n = calloc(1, sizeof(*n));
	jmp_buf escape;
	volatile int r = -1;

	if (!n)
		return -1;
	die_escape = &escape;
	if (!setjmp(escape)) {
		nbd_parse_uri(n, uri);
		r = 0;
	}
	die_escape = NULL;
	free(n->host);
	free(n->port);
	free(n->export_name);
	free(n->socket_path);
	free(n);
	return r;
}

/* The fuzz harness's entry to the handshake: see fuseexport.h */
int fuseexport_fuzz_nbd_handshake(int fd, uint32_t *min_block, uint32_t *max_payload)
{
	struct nbd_source n = { .export_name = "" };
	struct nbd_info info;
	char why[512];
	int r = nbd_handshake(&n, fd, &info, why, sizeof(why));

	*min_block = info.min_block;
	*max_payload = info.max_payload;
	return r;
}

/* The bottom of the stack: SOURCE's NBD connections, or its file or
 * block device. Exits on failure. */
static struct source *open_bottom(struct export *e, bool writable, bool growable)
{
	if (is_nbd_uri(e->source_path))
		return nbd_open(e->source_path, writable, growable, e->opt.queues,
				e->opt.retry, e->opt.debug);
	return file_open(e->source_path, writable, growable);
}

/* ===== The window ===== */
/*
 * The window (--offset, --size): a fixed-size range of the layer below,
 * the only place that knows its offset. Nothing outside it is ever read or
 * written, whatever a request asks.
 *
 * Holds: struct window, its operations and window_open(). Uses: the layer
 * below, the pass-down operations. Used by: partition_open, open_source,
 * commit_snapshot.
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
			    uint64_t pos, unsigned flags)
{
	struct window *w = window_of(s);

	if (n && !inside(w, pos, n))
		return -ENOSPC;
	return s->below->write(s->below, buf, inside(w, pos, n), w->offset + pos,
			       flags);
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
		.no_passthrough = "a window's offsets are not the source's",
		.sector_size = below->sector_size, .io_size = below->io_size,
		.size = window_size, .read = window_read, .map = window_map,
		.write = window_write, .flush = window_flush,
		.punch = window_punch, .zero = window_zero,
		.allocate = window_allocate, .seek = window_seek,
		.resize = no_resize, .space = window_space,
		.keep_no_copy = pass_keep_no_copy, .stamp = pass_stamp,
		.close = window_close,
	};
	return &w->s;
}

/* ===== Partitions ===== */
/*
 * Partitions (--partition=N, --partitions): a window whose numbers come
 * from the source's partition table, read here as Linux reads it: MBR
 * primaries 1-4 and logical partitions from 5 in the order of the
 * extended chain; GPT (a protective MBR means GPT) by entry index, the
 * backup header where the primary fails. A GPT header is checked as
 * Linux's is_gpt_valid() checks it (block/partitions/efi.c): its size,
 * CRC and own LBA, the usable LBAs inside the source, entries of 128
 * bytes and no more of them than 4 MiB holds (what Linux reads at most),
 * their CRC. Where Linux stops at number 255 (DISK_MAX_PARTS), every
 * entry a table holds is a partition here, and logical partitions count
 * up to the same PART_MAX. LBAs count logical sectors. A table is walked,
 * never held: a few KiB of memory, whatever it says.
 *
 * Holds: the MBR and GPT walk, partition_open(), the --partitions listing
 * (print_table, list_partitions), human_size, and the fuzzers' entries.
 * Uses: window_open, a source's read and sector size, open_bottom. Used
 * by: open_source (--partition), main (--partitions), commit_snapshot
 * (human_size).
 */
enum {
	GPT_ENTRY = 128,		/* the only entry size Linux takes */
	PART_MAX = (4 << 20) / GPT_ENTRY,	/* 32768: the highest number */
	GPT_NAME = 36,			/* UTF-16 units in an entry's name */
	GPT_SLICE = 32,			/* entries read at a time */
};

struct part {
	unsigned number;
	uint64_t start, sectors;	/* in logical sectors */
	char type[40];			/* MBR id (83) or GPT type GUID */
	char name[GPT_NAME * 3 + 1];	/* GPT name in UTF-8: 3 bytes a
					 * unit at most (see name_text) */
};

/* A table found and checked, and how far a walk through it has got */
struct table {
	const char *kind;		/* "dos" or "gpt" */
	unsigned sector;		/* bytes */
	unsigned next;			/* GPT: the entry index next; MBR: the
					 * slot (1-4), then the number, next */
	uint32_t count;			/* GPT: entries */
	uint64_t lba;			/* GPT: the entries' LBA; MBR: the
					 * extended partition's, or 0 */
	uint64_t ebr;			/* MBR: the EBR in buf or next, or 0 */
	uint32_t ext_size, ebr_size;	/* MBR: the extended partition's
					 * size, and the EBR's (its link's) */
	unsigned ext;			/* MBR: primaries looked at for an
					 * extended partition (0-4) */
	unsigned entry;			/* MBR: 1-4, the EBR's entry next; 5,
					 * its link; 0, no EBR in buf */
	unsigned hops, idle;		/* MBR: EBRs read, and read since the
					 * last logical partition */
	unsigned char mbr[512];		/* sector 0 */
	unsigned char buf[GPT_SLICE * GPT_ENTRY];	/* entries or an EBR */
};

static uint32_t le32(const unsigned char *p)
{
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const unsigned char *p)
{
	return le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* CRC-32 (IEEE 802.3, reflected), as GPT checks its header and entries:
 * that of n more bytes at p after crc, the CRC so far (0 to begin) */
static uint32_t crc32(uint32_t crc, const unsigned char *p, size_t n)
{
	/* the CRC of each 4-bit value: two steps a byte, from 64 bytes */
	static const uint32_t nibble[16] = {
		0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac,
		0x76dc4190, 0x6b6b51f4, 0x4db26158, 0x5005713c,
		0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c,
		0x9b64c2b0, 0x86d3d2d4, 0xa00ae278, 0xbdbdf21c,
	};
	uint32_t c = ~crc;

	while (n--) {
		c ^= *p++;
		c = c >> 4 ^ nibble[c & 15];
		c = c >> 4 ^ nibble[c & 15];
	}
	return ~c;
}

/* Read n bytes at pos of s, all of them: 0 or -errno (-EINVAL if the
 * source ends first: a table that would lie past the end is no table).
 * A read cut short is read on, so that the error that cut it is the one
 * returned. */
static int read_exact(struct source *s, void *buf, size_t n, uint64_t pos)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = s->read(s, (char *)buf + done, n - done, pos + done);

		if (r <= 0)
			return r < 0 ? (int)r : -EINVAL;
		done += r;
	}
	return 0;
}

/* GPT's header at lba, read into h (a sector) and checked as Linux checks
 * it: 0 if it is a good one, -EINVAL if not, or the -errno of reading it */
static int gpt_header(struct source *s, unsigned sector, uint64_t lba,
		      unsigned char *h)
{
	uint64_t last = s->size(s) / sector - 1;
	uint32_t size, crc;
	int r;

	if ((r = read_exact(s, h, sector, lba * sector)) < 0)
		return r;
	if (memcmp(h, "EFI PART", 8))
		return -EINVAL;
	size = le32(h + 12);
	if (size < 92 || size > sector)
		return -EINVAL;
	crc = le32(h + 16);
	memset(h + 16, 0, 4);
	return crc32(0, h, size) == crc && le64(h + 24) == lba &&
	       le64(h + 40) <= le64(h + 48) && le64(h + 48) <= last &&
	       le64(h + 72) <= last && le32(h + 80) >= 1 &&
	       le32(h + 80) <= PART_MAX && le32(h + 84) == GPT_ENTRY ? 0 : -EINVAL;
}

/* Read GPT entries index to index + n of t into t->buf: 0 or -errno */
static int gpt_slice(struct source *s, struct table *t, uint32_t index,
		     uint32_t n)
{
	return read_exact(s, t->buf, (size_t)n * GPT_ENTRY,
			  t->lba * t->sector + (uint64_t)index * GPT_ENTRY);
}

/* GPT's header at lba into t, if it and the entries it names are good
 * (the entries read a slice at a time for their CRC). Returns 0 or -errno
 * (-EINVAL: not a good table). */
static int gpt_at(struct source *s, struct table *t, uint64_t lba)
{
	unsigned char *h = malloc(t->sector);
	uint32_t crc = 0, i, n;
	int r;

	if (!h)
		return -ENOMEM;
	if ((r = gpt_header(s, t->sector, lba, h)) < 0)
		goto out;
	t->lba = le64(h + 72);
	t->count = le32(h + 80);
	for (i = 0; i < t->count; i += n) {
		n = min_u64(GPT_SLICE, t->count - i);
		if ((r = gpt_slice(s, t, i, n)) < 0)
			goto out;
		crc = crc32(crc, t->buf, (size_t)n * GPT_ENTRY);
	}
	r = crc == le32(h + 88) ? 0 : -EINVAL;
	t->kind = "gpt";
	t->next = 0;
out:
	free(h);
	return r;
}

/* GPT: the primary header at LBA 1 with its entries, else the backup at
 * the last LBA with its own (where Linux needs its gpt option to look):
 * a primary whose header or entries fail, or cannot be read, is damaged.
 * Returns 0 or -errno (-EINVAL: no good table; where no good one is found
 * and reading one failed, that error, not -EINVAL). */
static int read_gpt(struct source *s, struct table *t)
{
	uint64_t sectors = s->size(s) / t->sector;
	int r, backup;

	if (sectors < 3)
		return -EINVAL;
	r = gpt_at(s, t, 1);
	if (r < 0 && r != -ENOMEM) {
		backup = gpt_at(s, t, sectors - 1);
		r = backup == -EINVAL ? r : backup;
	}
	return r;
}

/* Find s's table and check it, ready for next_part: MBR, with the extended
 * chain; a protective entry (0xee) hands over to GPT. Returns 0 or -errno
 * (-EINVAL: no partition table). */
static int read_table(struct source *s, struct table *t)
{
	const unsigned char *b = t->mbr;
	int i, r;

	memset(t, 0, offsetof(struct table, mbr));
	t->sector = s->sector_size;
	if ((r = read_exact(s, t->mbr, sizeof(t->mbr), 0)) < 0)
		return r;
	if (b[510] != 0x55 || b[511] != 0xaa)
		return -EINVAL;
	/* a boot indicator other than 0 or 0x80 means no table, as Linux
	 * and partx judge it: the boot sector of a file system, say, whose
	 * code would read as partitions */
	for (i = 0; i < 4; i++)
		if (b[446 + 16 * i] & 0x7f)
			return -EINVAL;
	for (i = 0; i < 4; i++)
		if (b[446 + 16 * i + 4] == 0xee)
			return read_gpt(s, t);
	t->kind = "dos";
	t->next = 1;
	return 0;
}

/* A GPT type GUID, as sfdisk prints it (mixed endian) */
static void guid_text(char *out, const unsigned char *g)
{
	sprintf(out, "%08X-%04X-%04X-%02X%02X-%02X%02X%02X%02X%02X%02X",
		le32(g), g[4] | g[5] << 8, g[6] | g[7] << 8, g[8], g[9],
		g[10], g[11], g[12], g[13], g[14], g[15]);
}

/* A GPT name, GPT_NAME UTF-16LE units up to the first 0, into out as
 * UTF-8: a unit makes 3 bytes at most, and a surrogate pair 4 for its
 * two. A unit that is no character (a surrogate without its other half)
 * or a control character becomes U+FFFD, so that what is printed is
 * text, and on one line. */
static void name_text(char *out, const unsigned char *u)
{
	unsigned i, c, low;

	for (i = 0; i < GPT_NAME && (c = u[2 * i] | u[2 * i + 1] << 8); i++) {
		low = i + 1 < GPT_NAME ? u[2 * i + 2] | u[2 * i + 3] << 8 : 0;
		if (c >= 0xd800 && c < 0xdc00 && low >= 0xdc00 && low < 0xe000) {
			c = 0x10000 + ((c - 0xd800) << 10) + (low - 0xdc00);
			i++;
		} else if ((c >= 0xd800 && c < 0xe000) || c < 0x20 ||
			   (c >= 0x7f && c < 0xa0)) {
			c = 0xfffd;
		}
		if (c < 0x80) {
			*out++ = c;
		} else if (c < 0x800) {
			*out++ = 0xc0 | c >> 6;
			*out++ = 0x80 | (c & 0x3f);
		} else if (c < 0x10000) {
			*out++ = 0xe0 | c >> 12;
			*out++ = 0x80 | (c >> 6 & 0x3f);
			*out++ = 0x80 | (c & 0x3f);
		} else {
			*out++ = 0xf0 | c >> 18;
			*out++ = 0x80 | (c >> 12 & 0x3f);
			*out++ = 0x80 | (c >> 6 & 0x3f);
			*out++ = 0x80 | (c & 0x3f);
		}
	}
	*out = 0;
}

/* The next used GPT entry of t into p: 1, 0 at the end, or -errno. An
 * entry that ends before it starts is no partition. */
static int next_gpt(struct source *s, struct table *t, struct part *p)
{
	static const unsigned char unused[16];

	for (; t->next < t->count; t->next++) {
		const unsigned char *e = t->buf + t->next % GPT_SLICE * GPT_ENTRY;
		uint64_t first, end;
		int r;

		if (t->next % GPT_SLICE == 0 &&
		    (r = gpt_slice(s, t, t->next,
				   min_u64(GPT_SLICE, t->count - t->next))) < 0)
			return r;
		first = le64(e + 32);
		end = le64(e + 40);
		if (!memcmp(e, unused, 16) || end < first)
			continue;
		p->number = ++t->next;
		p->start = first;
		p->sectors = end - first + 1;
		guid_text(p->type, e);
		name_text(p->name, e + 56);
		return 1;
	}
	return 0;
}

static bool is_extended(unsigned char type)
{
	return type == 0x05 || type == 0x0f || type == 0x85;
}

/* The next logical partition of t into p, as Linux's parse_extended()
 * finds them: the chain of each extended primary in turn. In each EBR,
 * every entry but an extended one is a logical partition (relative to
 * the EBR; the 3rd and 4th only inside the EBR's and the extended
 * partition's extent, where junk may lie), and the first extended entry
 * links to the next EBR (relative to the extended partition). Returns 1,
 * or 0 at the end. */
static int next_logical(struct source *s, struct table *t, struct part *p)
{
	const unsigned char *e;
	unsigned i;

	/* a chain that breaks (an EBR that cannot be read or lacks its
	 * signature) ends there, the partitions found before it kept, as
	 * Linux does: a rescue still reaches them. A chain that loops ends
	 * as Linux ends it: after 100 EBRs without a logical partition, or
	 * at PART_MAX (and PART_MAX EBRs read in all). */
	while (t->next <= PART_MAX) {
		if (t->entry >= 1 && t->entry <= 4) {
			uint64_t start, sectors;

			i = t->entry++ - 1;
			e = t->buf + 446 + 16 * i;
			start = le32(e + 8), sectors = le32(e + 12);
			if (!sectors || is_extended(e[4]))
				continue;
			if (i >= 2 && (start + sectors > t->ebr_size ||
				       t->ebr + start + sectors > t->lba + t->ext_size))
				continue;
			p->number = t->next++;
			p->start = t->ebr + start;
			p->sectors = sectors;
			sprintf(p->type, "%x", e[4]);
			t->idle = 0;
			return 1;
		}
		if (t->entry == 5) {
			t->entry = 0;
			for (i = 0, e = t->buf + 446; i < 4; i++, e += 16)
				if (le32(e + 12) && is_extended(e[4]))
					break;
			t->ebr = i < 4 ? t->lba + le32(e + 8) : 0;
			t->ebr_size = i < 4 ? le32(e + 12) : 0;
			continue;
		}
		if (!t->ebr) {		/* the next extended primary */
			for (e = NULL; !e && t->ext < 4; ) {
				e = t->mbr + 446 + 16 * t->ext++;
				if (!le32(e + 8) || !le32(e + 12) || !is_extended(e[4]))
					e = NULL;
			}
			if (!e)
				break;
			t->lba = t->ebr = le32(e + 8);
			t->ext_size = t->ebr_size = le32(e + 12);
			t->idle = 0;
		}
		if (t->hops++ >= PART_MAX || t->idle++ >= 100 ||
		    read_exact(s, t->buf, 512, t->ebr * t->sector) < 0 ||
		    t->buf[510] != 0x55 || t->buf[511] != 0xaa) {
			t->ebr = 0;
			continue;
		}
		t->entry = 1;
	}
	return 0;
}

/* The next MBR partition of t into p, as Linux's msdos_partition() finds
 * them: the primaries (an entry of any size but 0), then the logical
 * partitions. Returns 1, or 0 at the end. */
static int next_mbr(struct source *s, struct table *t, struct part *p)
{
	const unsigned char *e;

	p->name[0] = 0;
	while (t->next <= 4) {
		e = t->mbr + 446 + 16 * (t->next - 1);
		p->number = t->next++;
		if (!le32(e + 12))
			continue;
		p->start = le32(e + 8);
		p->sectors = le32(e + 12);
		sprintf(p->type, "%x", e[4]);
		return 1;
	}
	return next_logical(s, t, p);
}

/* The next partition of t, found by read_table, into p, in the order of
 * their numbers: 1, 0 at the end, or -errno */
static int next_part(struct source *s, struct table *t, struct part *p)
{
	return *t->kind == 'g' ? next_gpt(s, t, p) : next_mbr(s, t, p);
}

/* Partition number of s into p, t its table: 0, or -errno (-ENOENT: the
 * table has no such partition; -EINVAL: there is no table) */
static int find_part(struct source *s, struct table *t, unsigned number,
		     struct part *p)
{
	int r = read_table(s, t);

	while (r >= 0 && (r = next_part(s, t, p)) > 0)
		if (p->number == number)
			return 0;
	return r < 0 ? r : -ENOENT;
}

/* The numbers of s's partitions, "1 2 5-8" (a run of four or more as a
 * range), for a message: a string to free */
static char *part_numbers(struct source *s, struct table *t)
{
	unsigned first = 0, last = 0;
	char *list = NULL;
	size_t len;
	FILE *f = open_memstream(&list, &len);
	struct part p;
	int r;

	if (!f)
		die("out of memory:");
	r = read_table(s, t);
	while (r >= 0 && (r = next_part(s, t, &p)) >= 0) {
		if (r && first && p.number == last + 1) {
			last++;
			continue;
		}
		if (first && last >= first + 3)
			fprintf(f, "%s%u-%u", ftell(f) ? " " : "", first, last);
		else
			for (; first && first <= last; first++)
				fprintf(f, "%s%u", ftell(f) ? " " : "", first);
		if (!r)
			break;
		first = last = p.number;
	}
	if (!ftell(f))
		fputs(r < 0 ? "unknown" : "none", f);
	if (fclose(f))
		die("out of memory:");
	return list;
}

/* Why s has no table t can use, as a message; exits */
static _Noreturn void table_error(int r, const char *path)
{
	if (r == -EINVAL)
		die("%s: no partition table (MBR or GPT) that can be read", path);
	die("%s: reading the partition table: %s", path, strerror(-r));
}

/* Stand a window on partition number of below. Exits if there is no such
 * partition or it does not lie inside the source. */
static struct source *partition_open(struct source *below, unsigned number,
				     const char *path)
{
	struct table *t = malloc(sizeof(*t));
	uint64_t size = below->size(below);
	struct source *s;
	struct part p;
	int r;

	if (!t)
		die("out of memory:");
	r = find_part(below, t, number, &p);
	if (r == -ENOENT)
		die("%s: no partition %u (partitions: %s)", path, number,
		    part_numbers(below, t));
	if (r < 0)
		table_error(r, path);
	if (p.start > size / t->sector || !p.sectors ||
	    p.sectors > size / t->sector - p.start)
		die("%s: partition %u runs past the end of the source "
		    "(partitions: %s)", path, number, part_numbers(below, t));
	s = window_open(below, p.start * t->sector, p.sectors * t->sector, path);
	free(t);
	return s;
}

/* A size for people: 100M, 1.5G, as partx prints it */
static void human_size(char *out, size_t n, uint64_t bytes)
{
	static const char units[] = "BKMGTPE";
	double v = bytes;
	int u = 0;

	while (v >= 1024 && u < 6)
		v /= 1024, u++;
	if (u && v < 10 && v != (uint64_t)v)
		snprintf(out, n, "%.1f%c", v, units[u]);
	else
		snprintf(out, n, "%.0f%c", v, units[u]);
}

/* Print s's table on out as partx --show does: 0 or -errno (-EINVAL: no
 * table) */
static int print_table(struct source *s, FILE *out)
{
	struct table *t = malloc(sizeof(*t));
	struct part p;
	char size[16];
	int r;

	if (!t)
		return -ENOMEM;
	if ((r = read_table(s, t)) < 0)
		goto out;
	fprintf(out, "%s partition table, %u-byte sectors\n", t->kind, t->sector);
	fprintf(out, "%3s %12s %12s %12s %6s %-36s %s\n", "NR", "START", "END",
		"SECTORS", "SIZE", "TYPE", "NAME");
	while ((r = next_part(s, t, &p)) > 0) {
		human_size(size, sizeof(size), p.sectors * t->sector);
		fprintf(out, "%3u %12llu %12llu %12llu %6s %-*s%s%s\n", p.number,
			(unsigned long long)p.start,
			(unsigned long long)(p.start + p.sectors - 1),
			(unsigned long long)p.sectors, size, *p.name ? 36 : 0,
			p.type, *p.name ? " " : "", p.name);
	}
out:
	free(t);
	return r;
}

/* --partitions: print the table, and exit */
static MAIN_ONLY _Noreturn void list_partitions(struct export *e)
{
	struct source *s = open_bottom(e, false, false);
	int r = print_table(s, stdout);

	if (r < 0)
		table_error(r, e->source_path);
	s->close(s);
	print_and_exit("");
}

/* A source whose bytes a fuzzer's read function gives */
struct fuzz_source {
	struct source s;
	uint64_t size;
	ssize_t (*read)(void *buf, size_t n, uint64_t pos);
};

static ssize_t fuzz_read(struct source *s, void *buf, size_t n, uint64_t pos)
{
	return ((struct fuzz_source *)s)->read(buf, n, pos);
}

static uint64_t fuzz_size(struct source *s)
{
	return ((struct fuzz_source *)s)->size;
}

int fuseexport_fuzz_partitions(uint64_t size, unsigned sector,
			       ssize_t (*read)(void *buf, size_t n, uint64_t pos),
			       FILE *out)
{
	struct fuzz_source f = {
		.s = { .sector_size = sector, .size = fuzz_size, .read = fuzz_read },
		.size = size, .read = read,
	};
	struct table *t = malloc(sizeof(*t)), *u = malloc(sizeof(*u));
	unsigned last = 0;
	struct part p, q;
	int r, count = 0;

	if (!t || !u) {
		r = -ENOMEM;
		goto out;
	}
	if ((r = print_table(&f.s, out)) < 0)
		goto out;
	r = read_table(&f.s, t);
	while (r >= 0 && (r = next_part(&f.s, t, &p)) > 0) {
		/* numbers rise, and --partition finds the first few as
		 * the walk did */
		if (p.number <= last || (count < 4 &&
		    (find_part(&f.s, u, p.number, &q) || q.start != p.start ||
		     q.sectors != p.sectors || strcmp(q.name, p.name)))) {
			r = -EPROTO;
			goto out;
		}
		last = p.number;
		count++;
	}
	if (r == 0 && find_part(&f.s, u, last + 1, &q) != -ENOENT)
		r = -EPROTO;
	free(part_numbers(&f.s, u));
	r = r < 0 ? r : count;
out:
	free(t);
	free(u);
	return r;
}

/* GPT's CRC-32, for a fuzzer that makes its tables' CRCs right */
uint32_t fuseexport_crc32(uint32_t crc, const unsigned char *p, size_t n)
{
	return crc32(crc, p, n);
}

/* ===== The snapshot ===== */
/*
 * The snapshot (--snapshot[=FILE]): copy-on-write over the layer below,
 * which is never written. A changed block's bytes live in the delta file
 * (FILE, or a memfd without one) at data + block * SNAP_BLOCK, and a bit
 * in the map says which blocks changed; a block punched whole is a hole
 * there, which reads as zeros. FILE is a 4 KiB header naming the source
 * it was made for, the map (a bit per block, in 4 KiB pieces), then the
 * data, sparse: exporting again resumes it, and --commit writes it into
 * the source. The layout is fixed and little-endian, whatever the
 * machine's page size or byte order.
 *
 * Crash safety: FILE's map only ever names blocks whose data is durable.
 * The live map is in memory; a flush (fsync, fdatasync, a FUA write)
 * copies the map pieces that gained bits, fdatasyncs FILE, which makes
 * durable the data of every block those copies name, then writes the
 * copies with pwrite and fdatasyncs again. Bits are only ever set, so a
 * crash at any point, a torn map write included, leaves a map whose
 * every bit names durable data: a block reads as its last flushed bytes
 * or bytes written since, never as zeros nobody wrote. Why not the old
 * way, the map mapped shared: write-back orders nothing, it may put the
 * map out before the data, and a kernel with 16 or 64 KiB pages refuses
 * a mapping at offset 4096. Why not a journal: that writes every block
 * twice, this writes only the map's changed pieces, and a flush that set
 * no new bit costs one fdatasync, as before.
 *
 * Holds: FILE's header and map, struct snapshot and its operations,
 * snapshot_open(), source_id (the source a FILE is for), the fuzzer's
 * entry, and commit_snapshot (--commit), which reads FILE with snap_new,
 * snap_load and delta_io and writes it into the source. Uses: the layer
 * below, the pass-down operations, open_bottom, window_open, human_size,
 * lock_soon.
 * Used by: open_source (--snapshot), main (--commit).
 */
enum { SNAP_BLOCK = 4096, SNAP_LOCKS = 64, SNAP_MAP = 4096,
       SNAP_WORDS = SNAP_MAP / 8 };	/* a map piece's 64-bit words */

struct snap_header {			/* little-endian in FILE */
	char magic[8];			/* "FXSNAP1" */
	uint64_t size;			/* the layer below's size */
	uint64_t dev, ino;		/* the source (rdev for a device) */
	uint64_t offset;		/* the layer below's start in it */
	uint32_t block;			/* SNAP_BLOCK */
	uint32_t pad;
};

struct snapshot {
	struct source s;
	int fd;				/* the delta file */
	bool durable;			/* FILE, not memory: the map is saved */
	uint64_t size, blocks, data;	/* data: where block 0 lies in it */
	size_t map_len, pieces;		/* the map's bytes, its 4 KiB pieces */
	_Atomic uint64_t *map;		/* a bit per block: changed (live) */
	uint64_t *saved;		/* what the next flush writes, LE */
	atomic_bool *dirty;		/* a piece has bits FILE lacks */
	bool *writing;			/* the pieces this flush writes */
	pthread_mutex_t flush;		/* one map save at a time */
	bool failed;			/* an fdatasync of FILE failed (under
					 * flush): its data may be lost */
	pthread_mutex_t copy[SNAP_LOCKS];	/* a block's copy-up, striped */
};

static struct snapshot *snap_of(struct source *s)
{
	return (struct snapshot *)s;
}

/* A header between host and FILE order (the same swap both ways) */
static void header_order(struct snap_header *h)
{
	h->size = htole64(h->size);
	h->dev = htole64(h->dev);
	h->ino = htole64(h->ino);
	h->offset = htole64(h->offset);
	h->block = htole32(h->block);
}

static bool changed(struct snapshot *n, uint64_t b)
{
	return atomic_load(&n->map[b / 64]) >> (b % 64) & 1;
}

/* Block b changed: set its bit, and mark its piece for the next flush */
static void mark_changed(struct snapshot *n, uint64_t b)
{
	uint64_t bit = 1ULL << (b % 64);

	if (!(atomic_fetch_or(&n->map[b / 64], bit) & bit))
		atomic_store(&n->dirty[b / 64 / SNAP_WORDS], true);
}

/* The first block from b on that is not in state c, or limit if none
 * before it (at most n->blocks): the scan stops where the caller's
 * interest does, as a run may span a whole map of millions of words */
static uint64_t run_end(struct snapshot *n, uint64_t b, bool c, uint64_t limit)
{
	limit = min_u64(limit, n->blocks);
	while (b < limit && changed(n, b) == c) {
		if (b % 64 == 0 && b + 64 <= limit &&
		    atomic_load(&n->map[b / 64]) == (c ? ~0ULL : 0))
			b += 64;
		else
			b++;
	}
	return min_u64(b, limit);
}

/* pread or pwrite all n bytes at pos of the delta file: 0 or -errno */
static int delta_io(struct snapshot *n, bool write, void *buf, size_t len,
		    uint64_t pos)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = write ? pwrite(n->fd, (char *)buf + done, len - done, pos + done)
				  : pread(n->fd, (char *)buf + done, len - done, pos + done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		done += r;
	}
	return 0;
}

static uint64_t snap_size(struct source *s)
{
	return snap_of(s)->size;
}

static ssize_t snap_read(struct source *s, void *buf, size_t n, uint64_t pos)
{
	struct snapshot *sn = snap_of(s);
	size_t done = 0;
	uint64_t last;

	n = pos < sn->size ? min_u64(n, sn->size - pos) : 0;
	last = (pos + n + SNAP_BLOCK - 1) / SNAP_BLOCK;
	while (done < n) {
		uint64_t p = pos + done, b = p / SNAP_BLOCK;
		bool c = changed(sn, b);
		size_t len = min_u64(n - done, run_end(sn, b, c, last) * SNAP_BLOCK - p);
		ssize_t r;

		if (c)
			r = delta_io(sn, false, (char *)buf + done, len, sn->data + p);
		else
			r = s->below->read(s->below, (char *)buf + done, len, p);
		if (r < 0)
			return done ? (ssize_t)done : r;
		done += c ? len : (size_t)r;
		if (!c && (size_t)r < len)
			break;
	}
	return done;
}

/* unchanged blocks are sent from the layer below's mapping, as fast as
 * a read-only export's */
static const char *snap_map(struct source *s, uint64_t pos, uint64_t n)
{
	struct snapshot *sn = snap_of(s);

	if (!n || pos + n > sn->size ||
	    run_end(sn, pos / SNAP_BLOCK, false,
		    (pos + n + SNAP_BLOCK - 1) / SNAP_BLOCK) * SNAP_BLOCK < pos + n)
		return NULL;
	return s->below->map(s->below, pos, n);
}

/* Put len bytes of buf (NULL: zeros) at off in block b; the first change
 * of a block copies it up from below. 0 or -errno. */
static int put_block(struct snapshot *sn, uint64_t b, size_t off,
		     const void *buf, size_t len)
{
	pthread_mutex_t *lock = &sn->copy[b % SNAP_LOCKS];
	uint64_t at = sn->data + b * SNAP_BLOCK;
	char block[SNAP_BLOCK];
	int r = 0;

	pthread_mutex_lock(lock);
	if (!buf && len == SNAP_BLOCK) {	/* a whole block punched */
		if (fallocate(sn->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      at, SNAP_BLOCK) < 0) {
			memset(block, 0, sizeof(block));
			r = delta_io(sn, true, block, SNAP_BLOCK, at);
		}
	} else if (changed(sn, b)) {
		if (!buf)
			memset(block, 0, len);
		r = delta_io(sn, true, buf ? (void *)buf : block, len, at + off);
	} else {
		ssize_t got = buf && len == SNAP_BLOCK ? 0 :
			sn->s.below->read(sn->s.below, block, SNAP_BLOCK,
					  b * SNAP_BLOCK);
		if (got < 0) {
			r = got;
		} else {
			memset(block + got, 0, SNAP_BLOCK - got);
			if (buf)
				memcpy(block + off, buf, len);
			else
				memset(block + off, 0, len);
			r = delta_io(sn, true, block, SNAP_BLOCK, at);
		}
	}
	if (r == 0)
		mark_changed(sn, b);
	pthread_mutex_unlock(lock);
	return r;
}

/* Put n bytes of buf (NULL: zeros) at pos, block by block: the number
 * put (short only after an error), or -errno */
static ssize_t snap_put(struct source *s, const void *buf, size_t n,
			uint64_t pos)
{
	struct snapshot *sn = snap_of(s);
	size_t done = 0;

	if (pos >= sn->size)
		return n ? -ENOSPC : 0;
	n = min_u64(n, sn->size - pos);
	while (done < n) {
		uint64_t p = pos + done;
		size_t off = p % SNAP_BLOCK, len = min_u64(n - done, SNAP_BLOCK - off);
		int r;

		r = put_block(sn, p / SNAP_BLOCK, off,
			      buf ? (const char *)buf + done : NULL, len);
		if (r < 0)
			return done ? (ssize_t)done : r;
		done += len;
	}
	return done;
}

/* A flush: the data of the blocks changed so far first, then the map
 * pieces that name them (see above). Nothing to do in memory. A piece
 * whose write failed is written by the next flush; once an fdatasync has
 * failed, every flush fails, as data the map would name may be lost.
 * 0 or -errno. */
static int snap_flush(struct source *s, bool datasync)
{
	struct snapshot *sn = snap_of(s);
	size_t i, j, k;
	bool any = false;
	int r = 0;

	(void)datasync;
	if (!sn->durable)
		return 0;
	pthread_mutex_lock(&sn->flush);
	if (sn->failed) {	/* the kernel reports a lost write once */
		pthread_mutex_unlock(&sn->flush);
		return -EIO;
	}
	for (i = 0; i < sn->pieces; i++) {
		sn->writing[i] = atomic_exchange(&sn->dirty[i], false);
		for (k = i * SNAP_WORDS; sn->writing[i] && k < (i + 1) * SNAP_WORDS; k++)
			sn->saved[k] = htole64(atomic_load(&sn->map[k]));
		any |= sn->writing[i];
	}
	if (fdatasync(sn->fd) < 0) {
		r = -errno;
		sn->failed = true;
	}
	for (i = 0; r == 0 && i < sn->pieces; i = j) {
		for (j = i; j < sn->pieces && sn->writing[j] == sn->writing[i]; j++)
			;
		if (sn->writing[i])
			r = delta_io(sn, true, sn->saved + i * SNAP_WORDS,
				     (j - i) * SNAP_MAP, SNAP_MAP + i * SNAP_MAP);
	}
	if (r == 0 && any && fdatasync(sn->fd) < 0) {
		r = -errno;
		sn->failed = true;
	}
	for (i = 0; r < 0 && i < sn->pieces; i++)
		if (sn->writing[i])
			atomic_store(&sn->dirty[i], true);
	pthread_mutex_unlock(&sn->flush);
	return r;
}

/* FUA: the write is flushed, as a flush would, with its map bit */
static ssize_t snap_write(struct source *s, const void *buf, size_t n,
			  uint64_t pos, unsigned flags)
{
	ssize_t r = snap_put(s, buf, n, pos);
	int f;

	if (r > 0 && (flags & WRITE_FUA) && (f = snap_flush(s, true)) < 0)
		return f;
	return r;
}

static int snap_zero(struct source *s, uint64_t pos, uint64_t len)
{
	ssize_t r = snap_put(s, NULL, len, pos);

	return r < 0 ? (int)r : 0;
}

/* Room reserved in FILE for the blocks of pos..pos+len, where their
 * first writes will put them, so that those find it as a reserving
 * fallocate promises (in memory nothing is reserved: that would take
 * the memory now); a snapshot keeps its size, so never past its end.
 * 0 or -errno. */
static int snap_allocate(struct source *s, uint64_t pos, uint64_t len,
			 bool keep_size)
{
	struct snapshot *sn = snap_of(s);
	uint64_t start, end;

	if (!keep_size && (pos > sn->size || len > sn->size - pos))
		return -ENOSPC;
	if (!sn->durable || pos >= sn->size || !len)
		return 0;
	start = pos / SNAP_BLOCK * SNAP_BLOCK;
	end = pos + min_u64(len, sn->size - pos);
	end = (end + SNAP_BLOCK - 1) / SNAP_BLOCK * SNAP_BLOCK;
	if (fallocate(sn->fd, FALLOC_FL_KEEP_SIZE, sn->data + start, end - start) < 0)
		return -errno;
	return 0;
}

/* SEEK_DATA or SEEK_HOLE over the combined view: changed runs answer
 * from the delta file, unchanged ones from below */
static int64_t snap_seek(struct source *s, uint64_t pos, int whence)
{
	struct snapshot *sn = snap_of(s);

	while (pos < sn->size) {
		uint64_t b = pos / SNAP_BLOCK, end;
		bool c = changed(sn, b);
		int64_t at;

		if (c) {
			at = lseek(sn->fd, sn->data + pos, whence);
			at = at < 0 ? (errno == ENXIO ? INT64_MAX : -errno)
				    : at - (int64_t)sn->data;
		} else {
			at = s->below->seek(s->below, pos, whence);
			at = at == -ENXIO ? INT64_MAX : at;
		}
		if (at < 0)
			return at;
		/* does b's run reach at? (scanned no further than at) */
		end = run_end(sn, b, c, (uint64_t)at / SNAP_BLOCK + 1) * SNAP_BLOCK;
		end = min_u64(end, sn->size);
		if ((uint64_t)at < end)
			return at;
		pos = end;
	}
	return whence == SEEK_HOLE ? (int64_t)sn->size : -ENXIO;
}

static int snap_space(struct source *s, struct space *sp)
{
	int r = s->below->space(s->below, sp);

	sp->free = sp->avail = 0;
	return r;
}

/* Free a snapshot's state, closing FILE if it is open */
static void snap_free(struct snapshot *sn)
{
	int i;

	if (sn->fd >= 0)
		close(sn->fd);
	for (i = 0; i < SNAP_LOCKS; i++)
		pthread_mutex_destroy(&sn->copy[i]);
	pthread_mutex_destroy(&sn->flush);
	free((void *)sn->map);
	free(sn->saved);
	free((void *)sn->dirty);
	free(sn->writing);
	free(sn);
}

static void snap_close(struct source *s)
{
	s->below->close(s->below);
	snap_free(snap_of(s));
}

/* A snapshot's state for a layer below of size bytes: where in FILE the
 * map and the data lie, and an empty map; no FILE yet. NULL when memory
 * runs out. */
static struct snapshot *snap_new(uint64_t size)
{
	struct snapshot *sn = calloc(1, sizeof(*sn));
	uint64_t pieces;
	int i;

	if (!sn)
		return NULL;
	sn->fd = -1;
	sn->size = size;
	sn->blocks = size / SNAP_BLOCK + (size % SNAP_BLOCK != 0);
	pieces = sn->blocks ? (sn->blocks - 1) / (SNAP_MAP * 8) + 1 : 1;
	if (pieces > SIZE_MAX / SNAP_MAP) {	/* a map no 32-bit process holds */
		free(sn);
		return NULL;
	}
	sn->pieces = pieces;
	sn->map_len = sn->pieces * SNAP_MAP;
	sn->data = SNAP_MAP + sn->map_len;
	pthread_mutex_init(&sn->flush, NULL);
	for (i = 0; i < SNAP_LOCKS; i++)
		pthread_mutex_init(&sn->copy[i], NULL);
	sn->map = calloc(1, sn->map_len);
	sn->saved = calloc(1, sn->map_len);
	sn->dirty = calloc(sn->pieces, sizeof(*sn->dirty));
	sn->writing = calloc(sn->pieces, sizeof(*sn->writing));
	if (!sn->map || !sn->saved || !sn->dirty || !sn->writing) {
		snap_free(sn);
		return NULL;
	}
	return sn;
}

/* Check FILE's header (sn->fd open) against id, in host order, and its
 * length, and read its map. NULL, or why FILE is refused. */
static const char *snap_load(struct snapshot *sn, const struct snap_header *id)
{
	struct snap_header h, want = *id;
	struct stat st;
	size_t i;

	header_order(&want);
	if (fstat(sn->fd, &st) < 0 || pread(sn->fd, &h, sizeof(h), 0) != sizeof(h) ||
	    memcmp(h.magic, "FXSNAP1", 8))
		return "not a snapshot file";
	if (memcmp(&h, &want, sizeof(h)))
		return "made for another source (its size, device, inode or "
		       "window differ)";
	if ((uint64_t)st.st_size < sn->data + sn->blocks * SNAP_BLOCK)
		return "not a snapshot file (shorter than its map and blocks)";
	if (delta_io(sn, false, sn->saved, sn->map_len, SNAP_MAP) < 0)
		return "not a snapshot file (its map cannot be read)";
	for (i = 0; i < sn->map_len / 8; i++) {
		uint64_t w = le64toh(sn->saved[i]);
		uint64_t valid = sn->blocks > i * 64 ? sn->blocks - i * 64 : 0;

		if (valid < 64 && w >> valid)
			return "not a snapshot file (its map names blocks past "
			       "the source's end)";
		atomic_store(&sn->map[i], w);
	}
	return NULL;
}

/* fsync the directory that holds path, so that a new FILE stays: 0 or
 * -1 (errno set; EINVAL, a directory that cannot be synced, is no
 * failure) */
static int sync_dir(const char *path)
{
	char dir[PATH_MAX];
	const char *slash = strrchr(path, '/');
	int fd, r;

	if (!slash)
		strcpy(dir, ".");
	else
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash == path ? 1 : slash - path), path);
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	r = fsync(fd) < 0 && errno != EINVAL ? -1 : 0;
	close(fd);
	return r;
}

/* Give FILE's map its room on disk now (FILE's length already covers
 * it): a flush that met a full disk writing a map piece would fail, and
 * every flush after it, while the data the piece names is in. fallocate,
 * or where the filesystem has none (EOPNOTSUPP, or EINVAL from some), the
 * map written over itself (sn->saved holds what FILE's map holds). 0 or
 * -errno. */
static int snap_map_room(struct snapshot *sn)
{
	if (fallocate(sn->fd, 0, SNAP_MAP, sn->map_len) == 0)
		return 0;
	if (errno == ENOSPC || errno == EDQUOT)
		return -errno;
	return delta_io(sn, true, sn->saved, sn->map_len, SNAP_MAP);
}

/* Open FILE (NULL: memory) as sn's delta for a snapshot of id (host
 * order). A new (empty) FILE gets its header, durable, then its length
 * and its map's room, durable, before it is used, so that a crash
 * meanwhile leaves it empty, or its header alone, which is taken as new
 * too; an old one is checked, its map read and given its room. Returns
 * false with why (one line, FILE's name first) if not. */
static bool snap_attach(struct snapshot *sn, const char *file,
			const struct snap_header *id, char *why, size_t n)
{
	const char *name = file ? file : "snapshot in memory", *bad;
	struct snap_header h, want;
	struct stat st;
	int r;

	sn->fd = file ? open(file, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)
		      : memfd_create("fuseexport-snapshot", MFD_CLOEXEC);
	sn->durable = file;
	if (sn->fd < 0 || fstat(sn->fd, &st) < 0)
		return snprintf(why, n, "%s: %s", name, strerror(errno)), false;
	if (!S_ISREG(st.st_mode))
		return snprintf(why, n, "%s: not a regular file", name), false;
	if (lock_soon(sn->fd, LOCK_EX) < 0)
		return snprintf(why, n, "%s: in use by another export", name), false;
	want = *id;
	header_order(&want);
	if (st.st_size == 0) {
		if (pwrite(sn->fd, &want, sizeof(want), 0) != sizeof(want) ||
		    (file && fdatasync(sn->fd) < 0))
			return snprintf(why, n, "%s: %s", name, strerror(errno)), false;
		st.st_size = sizeof(want);
	}
	if (st.st_size != sizeof(want) || pread(sn->fd, &h, sizeof(h), 0) != sizeof(h) ||
	    memcmp(&h, &want, sizeof(h))) {
		if ((bad = snap_load(sn, id)))
			return snprintf(why, n, "%s: %s", name, bad), false;
		if ((r = snap_map_room(sn)) < 0)
			return snprintf(why, n, "%s: no room for its map (%s)",
					name, strerror(-r)), false;
		return true;
	}
	if (ftruncate(sn->fd, sn->data + sn->blocks * SNAP_BLOCK) < 0)
		return snprintf(why, n, "%s: %s", name, strerror(errno)), false;
	if (file && (r = snap_map_room(sn)) < 0)
		return snprintf(why, n, "%s: no room for its map (%s)", name,
				strerror(-r)), false;
	if (file && (fsync(sn->fd) < 0 || sync_dir(file) < 0))
		return snprintf(why, n, "%s: %s", name, strerror(errno)), false;
	return true;
}

/* Stand a snapshot on below, its changes in file (NULL: in memory); id
 * names the source, its size and magic filled in here. NULL with why
 * (one line) if FILE is refused; exits if memory runs out. */
static struct source *snapshot_open(struct source *below, const char *file,
				    struct snap_header *id, char *why, size_t n)
{
	struct snapshot *sn = snap_new(below->size(below));

	if (!sn)
		die("out of memory:");
	memcpy(id->magic, "FXSNAP1", 8);
	id->size = sn->size;
	id->block = SNAP_BLOCK;
	if (!snap_attach(sn, file, id, why, n)) {
		snap_free(sn);
		return NULL;
	}
	sn->s = (struct source){
		.below = below, .writable = true,
		.passthrough_fd = -1,
		.no_passthrough = "a snapshot keeps its changes apart from the source",
		.sector_size = below->sector_size, .io_size = below->io_size,
		.size = snap_size, .read = snap_read, .map = snap_map,
		.write = snap_write, .flush = snap_flush, .punch = snap_zero,
		.zero = snap_zero, .allocate = snap_allocate, .seek = snap_seek,
		.resize = no_resize, .space = snap_space,
		.keep_no_copy = pass_keep_no_copy, .stamp = pass_stamp,
		.close = snap_close,
	};
	return &sn->s;
}

/* The source's identity in a snapshot's header: its device and inode
 * (a block device's own number). Exits if it cannot be had. */
static void source_id(const char *path, struct snap_header *id)
{
	uint64_t hash = 14695981039346656037ULL;
	struct stat st;

	if (is_nbd_uri(path)) {		/* an NBD export: its URI, FNV-1a */
		for (; *path; path++)
			hash = (hash ^ (unsigned char)*path) * 1099511628211ULL;
		id->dev = 0;
		id->ino = hash;
		return;
	}
	if (stat(path, &st) < 0)
		die("%s:", path);
	id->dev = S_ISBLK(st.st_mode) ? st.st_rdev : st.st_dev;
	id->ino = S_ISBLK(st.st_mode) ? 0 : st.st_ino;
}

static double seconds_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0->tv_sec) + (t.tv_nsec - t0->tv_nsec) / 1e9;
}

/* Open a snapshot FILE to commit, as an export takes it: no symlink
 * (removing it would leave the FILE it names, to be resumed later), no
 * FIFO to wait on, none an export holds; its header into *h. Returns the
 * fd; exits if FILE is none of that. */
static int open_to_commit(const char *file, struct snap_header *h)
{
	struct stat st;
	int fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);

	if (fd < 0 || fstat(fd, &st) < 0)
		die("%s:", file);
	if (!S_ISREG(st.st_mode))
		die("%s: not a regular file", file);
	if (lock_soon(fd, LOCK_EX) < 0)
		die("%s: in use by an export", file);
	if (pread(fd, h, sizeof(*h), 0) != sizeof(*h) ||
	    memcmp(h->magic, "FXSNAP1", 8))
		die("%s: not a snapshot file", file);
	header_order(h);
	if (h->block != SNAP_BLOCK)
		die("%s: not a snapshot file", file);
	return fd;
}

/* What a commit of sn, a snapshot of size bytes, writes: the number of
 * changed blocks into *count; returns their bytes */
static uint64_t changed_bytes(struct snapshot *sn, uint64_t size,
			      uint64_t *count)
{
	uint64_t b, total = 0;

	*count = 0;
	for (b = 0; b < sn->blocks; b++)
		if (changed(sn, b)) {
			++*count;
			total += min_u64(SNAP_BLOCK, size - b * SNAP_BLOCK);
		}
	return total;
}

/* A commit's progress on a terminal, over the line before: done bytes of
 * total, and the rate over t seconds */
static void commit_progress(uint64_t done, uint64_t total, double t)
{
	char done_s[32], total_s[32], rate_s[32];

	human_size(done_s, sizeof(done_s), done);
	human_size(total_s, sizeof(total_s), total);
	human_size(rate_s, sizeof(rate_s), t > 0 ? done / t : 0);
	fprintf(stderr, "\rfuseexport: committing: %s of %s, %s/s\033[K",
		done_s, total_s, rate_s);
}

/* --commit --snapshot=FILE SOURCE: write FILE's changed blocks into the
 * part of SOURCE it was made for, flush SOURCE, remove FILE. FILE is only
 * removed once everything is in, so a commit that failed halfway, run
 * again, finishes the job. On a terminal, progress on stderr (bytes of
 * all, rate) from the first block on, every half second; then one line
 * that says what was done, always. Exits: 0 when done. */
static MAIN_ONLY _Noreturn void commit_snapshot(struct export *e)
{
	const char *file = e->snapshot_file, *why;
	struct snap_header h, id;
	struct snapshot *sn;
	struct source *top;
	struct timespec t0;
	char block[SNAP_BLOCK], total_s[32];
	static const char zeros[SNAP_BLOCK];
	uint64_t b, count, total, done = 0;
	bool tty = isatty(STDERR_FILENO);
	double next = 0, t;
	int fd = open_to_commit(file, &h), r;

	top = open_bottom(e, true, false);
	if (h.offset || h.size != top->size(top))
		top = window_open(top, h.offset, h.size, e->source_path);
	id = h;
	source_id(e->source_path, &id);
	if (memcmp(&id, &h, sizeof(h)))
		die("%s: made for another source than %s", file, e->source_path);
	if (!(sn = snap_new(h.size)))
		die("out of memory:");
	sn->fd = fd;
	if ((why = snap_load(sn, &id)))
		die("%s: %s", file, why);
	total = changed_bytes(sn, h.size, &count);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (b = 0; b < sn->blocks; b++) {
		size_t len = min_u64(SNAP_BLOCK, h.size - b * SNAP_BLOCK);

		if (!changed(sn, b))
			continue;
		if ((r = delta_io(sn, false, block, len, sn->data + b * SNAP_BLOCK)) < 0)
			die("%s: reading block %llu: %s", file, (unsigned long long)b,
			    strerror(-r));
		r = memcmp(block, zeros, len) ? top->write(top, block, len, b * SNAP_BLOCK, 0)
					      : top->punch(top, b * SNAP_BLOCK, len);
		if (r < 0)
			die("%s: writing block %llu: %s", e->source_path,
			    (unsigned long long)b, strerror(-r));
		done += len;
		if (tty && (t = seconds_since(&t0)) >= next) {
			next = t + 0.5;
			commit_progress(done, total, t);
		}
	}
	if (next > 0)
		fputs("\r\033[K", stderr);
	if ((r = top->flush(top, false)) < 0)
		die("%s: flushing: %s", e->source_path, strerror(-r));
	/* FILE's removal durable too: back after a crash, it would be
	 * resumed over the source written since, or committed over it */
	if (unlink(file) < 0 || sync_dir(file) < 0)
		die("%s: removing it after the commit:", file);
	top->close(top);
	snap_free(sn);
	human_size(total_s, sizeof(total_s), total);
	fprintf(stderr, "fuseexport: committed %s in %llu blocks to %s\n",
		total_s, (unsigned long long)count, e->source_path);
	exit(0);
}

/* For a fuzzer (see fuseexport.h): resume FILE over the regular file
 * source as the program would; if taken, read it all, seek, write a
 * block and flush. 1 if taken, 0 if refused (why, one line, in why). */
int fuseexport_fuzz_snapshot(const char *file, const char *source, char *why,
			     size_t n)
{
	struct snap_header id = { .offset = 0 };
	struct source *below = file_open(source, false, false), *s;
	static char buf[1 << 16];
	uint64_t pos, size;

	source_id(source, &id);
	s = snapshot_open(below, file, &id, why, n);
	if (!s) {
		below->close(below);
		return 0;
	}
	size = s->size(s);
	for (pos = 0; pos < size; pos += sizeof(buf))
		s->read(s, buf, sizeof(buf), pos);
	s->seek(s, 0, SEEK_DATA);
	s->seek(s, 0, SEEK_HOLE);
	s->write(s, buf, 1000, size / 2, WRITE_FUA);
	s->close(s);
	return 1;
}

/* ===== The fault layer ===== */
/*
 * The fault layer (--fault, --control): rules that fail or delay the
 * requests they match, checked in order, the first to fire answering. A
 * rule that fails a request answers it alone: nothing reaches the layer
 * below, so a failed write changes nothing. After a crash (--control)
 * every data operation (read, write, flush, trim, zero, allocate, seek,
 * resize) fails with EIO; size, space and stamp pass, so GETATTR, STATFS,
 * OPEN and LOOKUP still work; a delay ends early at a crash (and what
 * slept through it fails) or at the export's end (fault_hurry). Random
 * choices come from one seeded generator, so one seed gives the same
 * failures for the same sequence of requests.
 *
 * Holds: the rules and their parser, the seeded generator (next_random),
 * struct faults and its operations, fault_open(), fault_hurry(), the rule
 * fuzzer's entry. Uses: the layer below, the pass-down operations,
 * scan_number. Used by: set_option (--fault), open_source, the control
 * FIFO (fault, clear, crash), the volatile cache (next_random),
 * end_export and run_export (fault_hurry).
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
	atomic_int crashed;		/* 0, or CRASHED or CRASHED_TORN */
	pthread_cond_t woken;		/* delays end: fault_hurry() */
	bool hurry;			/* under lock: no more delays */
};

enum { CRASHED = 1, CRASHED_TORN };

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

	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	n = strtoull(s, &end, 10);
	if (errno || n > 3600000000ULL)
		return false;
	for (i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (!strcmp(end, units[i].unit) && n <= 3600000000ULL / units[i].us) {
			*us = n * units[i].us;
			return true;
		}
	return false;
}

/* Ops joined by + (read, write, flush, trim, zero, any) into *ops as
 * FAULT_ bits: false if value is not such a list */
static bool scan_ops(const char *value, unsigned *ops)
{
	char *list = strdup(value), *op, *next;
	size_t i;

	*ops = 0;
	for (op = list; op; op = next) {
		next = strchr(op, '+');
		if (next)
			*next++ = 0;
		for (i = 0; i < 5 && strcmp(op, fault_op_names[i]); i++)
			;
		if (i < 5)
			*ops |= 1 << i;
		else if (!strcmp(op, "any"))
			*ops |= FAULT_ANY;
		else
			break;
	}
	free(list);
	return !op;
}

/* An errno name of errno_names, or none (0), into *error: false if s is
 * neither */
static bool scan_errno(const char *s, int *error)
{
	size_t i;

	for (i = 0; i < N_ERRNO_NAMES && strcmp(s, errno_names[i].name); i++)
		;
	if (i == N_ERRNO_NAMES && strcmp(s, "none"))
		return false;
	*error = i < N_ERRNO_NAMES ? errno_names[i].error : 0;
	return true;
}

/* One key=value of a rule into r. Returns NULL, or what is wrong. */
static const char *rule_item(struct fault_rule *r, const char *key,
			     const char *value)
{
	uint64_t v, length;
	char *end;

	if (!strcmp(key, "op")) {
		if (!scan_ops(value, &r->ops))
			return "not read, write, flush, trim, zero or any "
			       "(joined by +)";
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
		if (!scan_errno(value, &r->error))
			return "not an errno name (EIO, ENOSPC, EROFS, EINVAL, "
			       "EPERM, EACCES, ENOMEM, ETIMEDOUT, EAGAIN, EDQUOT, EFBIG, "
			       "ENODEV, ENXIO, EBUSY, EBADMSG, EOPNOTSUPP, ENOLINK) "
			       "or none";
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

/* The rule parser's entry for a fuzzer: see fuseexport.h */
int fuseexport_fuzz_rule(const char *text)
{
	struct fault_rule *r;
	char why[512];

	r = parse_rule(text, why, sizeof(why));
	free_rules(r);
	return r ? 0 : -1;
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

/* Set on a thread whose request a rule failed: flush_export tells a
 * flush that a rule failed, which lost nothing, from a failed one */
static _Thread_local bool rule_failed;

/* Sleep a rule's delay of us microseconds, or less once fault_hurry()
 * is called: neither a crash nor the export's end waits out a delay of
 * up to an hour */
static void fault_sleep(struct faults *f, uint64_t us)
{
	struct timespec t;
	long ns;

	clock_gettime(CLOCK_MONOTONIC, &t);
	ns = t.tv_nsec + (long)(us % 1000000) * 1000;
	t.tv_sec += us / 1000000 + ns / 1000000000;
	t.tv_nsec = ns % 1000000000;
	pthread_mutex_lock(&f->lock);
	while (!f->hurry && !pthread_cond_timedwait(&f->woken, &f->lock, &t))
		;		/* woken for nothing: sleep on */
	pthread_mutex_unlock(&f->lock);
}

/* End every delay now and later: a crash, or the export ending */
static void fault_hurry(struct faults *f)
{
	if (!f)
		return;
	pthread_mutex_lock(&f->lock);
	f->hurry = true;
	pthread_cond_broadcast(&f->woken);
	pthread_mutex_unlock(&f->lock);
}

/* Count a request (op, len bytes at pos; a flush has no range) against the
 * rules; the first that fires decides: its delay is slept, then its error
 * returned. Returns 0 (go on below) or -errno. */
static int fault_check(struct faults *f, unsigned op, uint64_t pos, uint64_t len)
{
	struct fault_rule *r;
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
	rule_failed |= error != 0;
	if (delay)
		fault_sleep(f, delay);
	/* a crash while it slept: none of it may reach the source */
	return atomic_load(&f->crashed) ? -EIO : -error;
}

static ssize_t fault_read(struct source *s, void *buf, size_t n, uint64_t pos)
{
	int r = fault_check(faults_of(s), FAULT_READ, pos, n);

	return r < 0 ? r : s->below->read(s->below, buf, n, pos);
}

static ssize_t fault_write(struct source *s, const void *buf, size_t n,
			   uint64_t pos, unsigned flags)
{
	int r = fault_check(faults_of(s), FAULT_WRITE, pos, n);

	return r < 0 ? r : s->below->write(s->below, buf, n, pos, flags);
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

static void fault_close(struct source *s)
{
	struct faults *f = faults_of(s);

	free_rules(f->rules);
	pthread_cond_destroy(&f->woken);
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

	pthread_condattr_t attr;

	if (!f)
		die("out of memory:");
	pthread_mutex_init(&f->lock, NULL);
	pthread_condattr_init(&attr);
	if (pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) ||
	    pthread_cond_init(&f->woken, &attr))
		die("fault rules: a condition variable on CLOCK_MONOTONIC");
	pthread_condattr_destroy(&attr);
	f->rules = rules;
	for (r = rules; r; r = r->next)
		r->number = ++f->numbered;
	f->random = seed;
	f->debug = debug;
	f->s = (struct source){
		.below = below, .writable = below->writable,
		.growable = below->growable, .resizable = below->resizable,
		.passthrough_fd = -1,
		.no_passthrough = "fault rules and --control need every request "
				  "to come here",
		.sector_size = below->sector_size, .io_size = below->io_size,
		/* no mapping: every READ must meet the rules, those to come */
		.size = pass_size, .read = fault_read, .map = no_map,
		.write = fault_write, .flush = fault_flush,
		.punch = fault_punch, .zero = fault_zero,
		.allocate = fault_allocate, .seek = fault_seek,
		.resize = fault_resize, .space = pass_space,
		.keep_no_copy = pass_keep_no_copy, .stamp = pass_stamp,
		.close = fault_close,
	};
	return f;
}

/* ===== The volatile write cache ===== */
/*
 * The volatile write cache (--write-cache=volatile), a disk's cache that
 * loses power: writes, punches, zero ranges and size changes are held in
 * memory, in 4 KiB blocks with a dirty bit per 512-byte sector, until a
 * flush writes them below in order of offset and flushes below. Reads see
 * them over what lies below. A crash drops what is held, or (torn) writes
 * a seeded random half of its sectors below first. One mutex covers it all.
 *
 * Holds: struct cache, its held blocks in a hash table, the write-back,
 * cache_crash(), cache_open(). Uses: the layer below, the pass-down
 * operations, next_random. Used by: open_source (--write-cache=volatile),
 * crash_export (the control FIFO).
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

/* A FUA write is held as any other (what is held over it is then up to
 * date) and written through at once, with FUA, as a disk's volatile cache
 * does: a crash loses the rest, never it */
static ssize_t cache_write(struct source *s, const void *buf, size_t n,
			   uint64_t pos, unsigned flags)
{
	struct cache *c = cache_of(s);
	ssize_t r;

	pthread_mutex_lock(&c->lock);
	if (!s->growable)
		n = pos < c->size ? min_u64(n, c->size - pos) : 0;
	r = c->crashed ? -EIO : hold(c, buf, n, pos, HELD_DATA);
	if (r == 0 && pos + n > c->size)
		c->size = pos + n;
	if (r == 0)
		r = n && (flags & WRITE_FUA) ?
		    s->below->write(s->below, buf, n, pos, WRITE_FUA) : (ssize_t)n;
	pthread_mutex_unlock(&c->lock);
	return r;
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
					 pos + first * SECTOR, 0);
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
			if (!(all[i]->dirty & (1 << k)))
				continue;
			if (at >= end || !(next_random(&c->random) & 1) ||
			    below->write(below, all[i]->data ?
					 all[i]->data + k * SECTOR : zeros,
					 min_u64(SECTOR, end - at), at, 0) < 0) {
				dropped++;
				continue;
			}
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
		.no_passthrough = "a volatile write cache needs every request "
				  "to come here",
		.sector_size = below->sector_size, .io_size = below->io_size,
		/* no mapping: the source lacks what is held */
		.size = cache_size, .read = cache_read, .map = no_map,
		.write = cache_write, .flush = cache_flush,
		.punch = cache_punch, .zero = cache_zero,
		.allocate = cache_allocate, .seek = cache_seek,
		.resize = cache_resize, .space = pass_space,
		.keep_no_copy = pass_keep_no_copy, .stamp = pass_stamp,
		.close = cache_close,
	};
	return c;
}

/* ===== The control FIFO ===== */
/*
 * The control FIFO (--control=PATH): one command a line, read by a thread
 * of its own, as a test script writes them: `fault RULE`, `clear`,
 * `crash`, `crash torn`.
 *
 * Holds: crash_export and export_crashed, the FIFO made and removed, the
 * line reader, the control thread, and the fuzzer's entry. Uses: the
 * fault layer (parse_rule, add_rule, clear_rules), cache_crash,
 * drop_kernel_cache (Going live). Used by: main (open_control,
 * close_control), run_export (the thread, close_control, export_crashed),
 * end_export and say_ended (export_crashed), detach and run_command
 * (close_control).
 */

/* 0, or how the export crashed: CRASHED or CRASHED_TORN */
static int export_crashed(struct export *e)
{
	return e->faults ? atomic_load(&e->faults->crashed) : 0;
}

/* Power lost: the cache drops (or tears) what it holds, and from now on
 * every data operation fails with EIO (read, write, flush, trim, zero,
 * allocate, seek, resize), until the export ends; attributes and opens
 * still work */
static void crash_export(struct export *e, bool torn)
{
	if (export_crashed(e)) {	/* power is lost once */
		if (e->opt.debug)
			fprintf(stderr, "fuseexport: crash: crashed already\n");
		return;
	}
	if (e->volatile_cache) {
		/* a write-back asleep in a delay lands, as a disk's write
		 * under way may; then the cache drops (or tears) the rest */
		fault_hurry(e->faults);
		cache_crash(e->volatile_cache, torn, e->opt.debug);
	}
	atomic_store(&e->faults->crashed, torn ? CRASHED_TORN : CRASHED);
	fault_hurry(e->faults);		/* what sleeps in a delay fails */
	if (e->opt.debug && !e->volatile_cache)
		fprintf(stderr, "fuseexport: crash: every read, write and flush fails from now on\n");
}

/* Make the FIFO (the caller's, mode 0600; refused if PATH is there) and
 * open it, so that writers never wait for the thread. Exits on failure. */
static MAIN_ONLY void open_control(struct export *e)
{
	const char *path = e->control_path;

	if (!path)
		return;
	if (mkfifo(path, 0600) < 0)
		die(errno == EEXIST ? "--control=%s: exists already (the "
		    "export makes the FIFO itself)" : "--control=%s:", path);
	if (lstat(path, &control_stat) < 0)
		die("--control=%s:", path);
	control_made = path;
	e->control_fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (e->control_fd < 0)
		die("--control=%s:", path);
	e->control_spare = open(path, O_WRONLY | O_CLOEXEC);
	if (e->control_spare < 0 || fchmod(e->control_fd, 0600) < 0 ||
	    fcntl(e->control_fd, F_SETFL, 0) < 0)
		die("--control=%s:", path);
}

/* Remove the FIFO made, if its path still names it: not another
 * export's FIFO made there since, nor a file a user put in its place
 * (the FIFO, held open, keeps its inode number from another file) */
static void remove_control(void)
{
	struct stat st;

	if (control_made && lstat(control_made, &st) == 0 &&
	    st.st_dev == control_stat.st_dev && st.st_ino == control_stat.st_ino)
		unlink(control_made);
	control_made = NULL;
}

/* Remove the FIFO and stop its thread: the export is over */
static void close_control(struct export *e)
{
	if (!e->control_path)
		return;
	remove_control();
	if (e->control_running) {	/* wake it with an empty line */
		atomic_store(&e->control_stop, true);
		if (write(e->control_spare, "\n", 1) == 1)
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
		if (rule && e->opt.debug)
			fprintf(stderr, "fuseexport: control: fault rule %u: %s\n",
				rule->number, rule->text);
	} else if (!strcmp(line, "clear")) {
		clear_rules(e->faults);
	} else if (!strcmp(line, "crash") || !strcmp(line, "crash torn")) {
		crash_export(e, line[5]);
		drop_kernel_cache(e);	/* mapped pages: gone with the rest */
	} else {
		fprintf(stderr, "fuseexport: control: '%s': unknown command "
			"(fault RULE, clear, crash, crash torn)\n", line);
	}
}

/* The control FIFO's lines: the bytes of the line under way, and whether
 * it is over the limit, to be dropped whole up to its newline */
enum { CONTROL_LINE_MAX = 4095 };	/* a line's bytes, its newline not counted */
struct line_reader {
	char buf[CONTROL_LINE_MAX + 1];
	size_t have;
	bool too_long;
};

/* Take the n bytes just put at lr->buf + lr->have: carry out each line
 * they end; a line over CONTROL_LINE_MAX bytes is reported once and
 * dropped whole, its tail too, never run as a line of its own; a line
 * with a NUL byte is reported and dropped (C strings would end there) */
static void control_lines(struct export *e, struct line_reader *lr, size_t n)
{
	char *start = lr->buf, *end = lr->buf + lr->have + n, *nl;

	for (; (nl = memchr(start, '\n', end - start)); start = nl + 1) {
		*nl = 0;
		if (lr->too_long)
			lr->too_long = false;	/* its end: dropped with the rest */
		else if (memchr(start, 0, nl - start))	/* not its head alone */
			fprintf(stderr, "fuseexport: control: a line with a NUL "
				"byte: dropped\n");
		else
			control_command(e, start);
	}
	lr->have = lr->too_long ? 0 : end - start;
	memmove(lr->buf, start, lr->have);
	if (lr->have == sizeof(lr->buf)) {	/* no newline in sight */
		fprintf(stderr, "fuseexport: control: a line over %d bytes: "
			"dropped whole\n", CONTROL_LINE_MAX);
		lr->too_long = true;
		lr->have = 0;
	}
}

/* The control thread: read lines until the export ends; with the spare
 * write end open, read(2) never sees an EOF. close_control() sets
 * control_stop and wakes it. */
static void *control_loop(void *arg)
{
	struct export *e = arg;
	struct line_reader lr = { .have = 0 };
	ssize_t n;

	for (;;) {
		n = read(e->control_fd, lr.buf + lr.have, sizeof(lr.buf) - lr.have);
		if (atomic_load(&e->control_stop))
			break;
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		control_lines(e, &lr, n);
	}
	return NULL;
}

/* The line reader's entry for a fuzzer: see fuseexport.h */
void fuseexport_fuzz_control(struct export *e, const char *data, size_t n,
			     size_t chunk)
{
	struct line_reader lr = { .have = 0 };
	size_t k;

	for (; n; data += k, n -= k) {		/* as read(2) would give them */
		k = min_u64(min_u64(n, chunk ? chunk : n), sizeof(lr.buf) - lr.have);
		memcpy(lr.buf + lr.have, data, k);
		control_lines(e, &lr, k);
		if (lr.have > CONTROL_LINE_MAX)
			abort();
	}
}

/* ===== The export and its stack ===== */
/*
 * What the export does with its stack: the size, resizing, and flushing,
 * each in one place for every handler.
 *
 * Holds: export_size, resize_export (map_lock's writer), flush_export (a
 * failed flush fails every later one), why_no_passthrough, open_source,
 * which builds the stack from the options (take_attributes: the file's
 * mode, owner and times), and fill_attr, the attributes GETATTR and
 * SETATTR reply with. Uses: e->top, e->lock, map_lock, every layer's
 * open. Used by: the handlers, run_export, main and fuseexport_new
 * (open_source).
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

/* Writes the source was told of may be lost (err: why): the first such
 * error is kept, and every flush from now on fails */
static void failed_flush(struct export *e, int err)
{
	int none = 0;

	atomic_compare_exchange_strong(&e->flush_error, &none, err);
}

/* Make the source's writes durable. Once a flush has failed, every later
 * one fails with EIO: the kernel reports a writeback error once per open
 * file, and all clients share ours, so the next to ask would hear nothing.
 * A flush a fault rule failed fails alone: the rule lost nothing.
 * Returns 0 or -errno. */
static int flush_export(struct export *e, bool datasync)
{
	int r;

	if (atomic_load(&e->flush_error))
		return -EIO;
	rule_failed = false;
	r = e->top->flush(e->top, datasync);
	if (r < 0 && !rule_failed)	/* a rule's failure is its answer alone */
		failed_flush(e, -r);
	return r;
}

/* Passthrough is possible only where the stack is a bare regular file
 * whose every path may go to the source, as root. Returns why not, or
 * NULL: then INIT asks the kernel. */
static const char *why_no_passthrough(struct export *e)
{
	if (e->opt.want_passthrough == OFF)
		return "--passthrough=off";
	if (e->opt.cache == CACHE_READ)
		return "--cache=read asks for the kernel's page cache";
	if (e->opt.cache == CACHE_WRITEBACK)
		return "--cache=writeback asks for the kernel's page cache";
	if (e->top->no_passthrough)
		return e->top->no_passthrough;
	if (e->opt.writable && !e->opt.growable)
		return "a fixed-size export's writes must come here (passed "
		       "through, they could grow the source)";
	if (geteuid() != 0)
		return "registering a backing file needs root";
	return NULL;
}

/* The exported file's attributes: read-only or not, the caller's, and
 * the source's times (an NBD export's: its start). Exits on failure. */
static void take_attributes(struct export *e)
{
	struct stat st;

	if (is_nbd_uri(e->source_path)) {	/* the times: the export's start */
		clock_gettime(CLOCK_REALTIME, &st.st_mtim);
		st.st_atim = st.st_ctim = st.st_mtim;
	} else if (stat(e->source_path, &st) < 0) {
		die("%s:", e->source_path);
	}
	e->mode = e->opt.writable ? 0600 : 0400;
	e->uid = getuid();
	e->gid = getgid();
	e->atime = st.st_atim;
	e->mtime = st.st_mtim;
	e->ctime = st.st_ctim;
}

/* Build the source stack (the file or NBD connection; a window or a
 * partition; a snapshot; the fault layer if rules may come; the volatile
 * cache), settle whether passthrough is even possible, and take the
 * exported file's attributes. Exits on failure. */
static void open_source(struct export *e)
{
	struct snap_header id = { .offset = e->opt.offset };
	char why[PATH_MAX + 200];

	if (e->opt.write_cache && !e->opt.writable)
		die("--write-cache=volatile: needs a writable export (-w or -g)");
	e->top = open_bottom(e, e->opt.writable && !e->opt.snapshot,
			     e->opt.growable);
	if (e->opt.partition) {
		e->top = partition_open(e->top, e->opt.partition,
					e->source_path);
		id.offset = window_of(e->top)->offset;
	} else if (e->opt.offset || e->opt.window) {
		e->top = window_open(e->top, e->opt.offset, e->opt.window,
				     e->source_path);
	}
	if (e->opt.snapshot) {
		source_id(e->source_path, &id);
		e->top = snapshot_open(e->top, e->snapshot_file, &id, why, sizeof(why));
		if (!e->top)
			die("%s", why);
	}
	if (e->opt.rules || e->control_path) {
		/* the layer takes the rules over: they are its from now on */
		e->faults = fault_open(e->top, e->opt.rules, e->opt.seed,
				       e->opt.debug);
		e->top = &e->faults->s;
	}
	if (e->opt.write_cache) {
		e->volatile_cache = cache_open(e->top, e->opt.seed);
		e->top = &e->volatile_cache->s;
	}
	/* the kernel's page cache would answer reads the rules never see */
	if ((e->faults || e->volatile_cache) &&
	    (e->opt.cache == CACHE_READ || e->opt.cache == CACHE_WRITEBACK))
		die("--cache=%s: fault rules, --control and --write-cache=volatile "
		    "need every request to come here (--cache=none or auto)",
		    cache_names[e->opt.cache]);
	if (e->opt.debug && (e->faults || e->volatile_cache))
		fprintf(stderr, "fuseexport: seed %llu (--seed=%llu repeats "
			"every random choice)\n", (unsigned long long)e->opt.seed,
			(unsigned long long)e->opt.seed);
	e->no_passthrough = why_no_passthrough(e);
	if (e->opt.want_passthrough == ON && e->no_passthrough)
		die("--passthrough=on: %s", e->no_passthrough);
	e->passthrough = !e->no_passthrough;

	take_attributes(e);
	pthread_mutex_init(&e->lock, NULL);
	pthread_rwlock_init(&e->map_lock, NULL);
	e->fuse_fd = -1;
	atomic_store(&e->ready_fd, -1);
	e->ready_pending = -1;
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
	a->blksize = e->top->io_size;
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

/* ===== The handlers ===== */
/*
 * The handlers, one per opcode. Each takes the request in r->in (and a
 * WRITE's payload in r->data), with len the bytes after the in_header, and
 * returns the length of its reply payload, put in r->reply unless it points
 * r->iov[1] elsewhere, or -errno.
 *
 * Holds: fuse_init to fuse_statfs; INIT's helper settle_cache (the page
 * cache and open flags); and OPEN's helpers: open_backing (the
 * passthrough backing file), keep_cache and open_seen (whether the
 * kernel keeps its pages). Uses: the export and its stack, e->top, halt.
 * Used by: the dispatcher's table, init_done (open_backing).
 */

/* INIT's choice of the kernel's page cache (e->page_cache), from the
 * --cache asked and the flags the kernel offered, and the open flags that
 * go with it; returns flags, with FUSE_WRITEBACK_CACHE if it is chosen */
static uint64_t settle_cache(struct export *e, uint64_t offered,
			     uint64_t flags)
{
	/* auto: passthrough where it applies, else the kernel's page cache,
	 * unless every request must meet fault rules or the volatile cache */
	e->page_cache = e->opt.cache;
	if (e->page_cache == CACHE_AUTO)
		e->page_cache = e->passthrough || e->faults ||
				e->volatile_cache ? CACHE_NONE : CACHE_READ;
	if (e->page_cache == CACHE_WRITEBACK &&
	    !(offered & FUSE_WRITEBACK_CACHE))
		e->page_cache = CACHE_READ;
	if (e->page_cache == CACHE_WRITEBACK)
		flags |= FUSE_WRITEBACK_CACHE;
	/* Direct I/O keeps a single copy of the data cached, the source's;
	 * without mmap on direct I/O files (before 6.6) use the page cache.
	 * The cache modes keep the kernel's copy, across opens where the
	 * source proves it current (fuse_open), and the source keeps none. */
	if (e->page_cache != CACHE_NONE) {
		e->top->keep_no_copy(e->top);
		e->direct_writers = e->page_cache == CACHE_READ &&
				    (flags & FUSE_DIRECT_IO_ALLOW_MMAP);
	} else if (flags & FUSE_DIRECT_IO_ALLOW_MMAP) {
		e->open_flags = FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES;
	}
	return flags;
}

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
	if (atomic_load(&e->initialized))
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
	if (e->passthrough && !(offered & FUSE_PASSTHROUGH)) {
		e->passthrough = false;
		e->no_passthrough = "the kernel offers no FUSE passthrough "
				    "(Linux 6.9 and later, CONFIG_FUSE_PASSTHROUGH)";
		if (e->opt.want_passthrough == ON)
			return halt(e, "--passthrough=on: %s", e->no_passthrough);
	}
	flags = settle_cache(e, offered, flags);
	if (e->passthrough) {
		flags |= FUSE_PASSTHROUGH | FUSE_INIT_EXT;
		out->max_stack_depth = 1;	/* the source is no FUSE file */
	}
	e->uring = e->opt.want_io_uring != OFF &&
		   (offered & FUSE_OVER_IO_URING);
	if (e->uring)
		flags |= FUSE_OVER_IO_URING | FUSE_INIT_EXT;
	else if (e->opt.want_io_uring == ON)
		return halt(e, "--io-uring=on: the kernel offers no FUSE over io_uring "
			    "(Linux 6.14 and later, with "
			    "/sys/module/fuse/parameters/enable_uring set to Y)");
	atomic_store(&e->initialized, true);

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
	    !e->opt.growable)
		valid &= ~FATTR_SIZE;
	if ((valid & (FATTR_UID | FATTR_GID)) && !e->allow_other)
		return -EPERM;
	if (valid & FATTR_MODE) {
		if ((in->mode & S_IFMT) && (in->mode & S_IFMT) != S_IFREG)
			return -EINVAL;
		if ((mode & ~0777) || ((mode & 077) && !e->allow_other))
			return -EPERM;
		if ((mode & 0222) && !e->opt.writable)
			return -EROFS;
	}
	if ((valid & FATTR_SIZE) && !e->opt.writable)
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

/* Whether the kernel may keep the export's pages it caches at this open:
 * only where the source's stamp proves its bytes unchanged since the last
 * open's (the export's own writes to it count as changes too); else the
 * kernel drops them as it opens, and the open reads what the source holds
 * now, as NFS's close-to-open. The stamp is taken before the reply, so
 * whatever the kernel caches after the drop was read after it.
 *
 * The kernel drops them in the opener, once it has the reply, and
 * another open may finish before that opener runs: an open that came at
 * the same time, or later, with a stamp as current, must not keep pages
 * the drop has yet to go through. So no open keeps them until a request
 * of an open that dropped them since the stamp changed (its READ, WRITE,
 * FLUSH, RELEASE...) shows that open finished, drop and all (open_seen).
 * Sets *number to this open's number, for its fh. */
static bool keep_cache(struct export *e, uint64_t *number)
{
	struct stamp now;
	bool proven = e->top->stamp(e->top, &now), same, keep;

	pthread_mutex_lock(&e->lock);
	*number = ++e->opens;
	same = proven && e->stamped && !memcmp(&now, &e->stamp, sizeof(now));
	if (!same)
		atomic_store(&e->drop_pending, *number);
	keep = same && !atomic_load(&e->drop_pending);
	e->stamped = proven;
	if (proven)
		e->stamp = now;
	pthread_mutex_unlock(&e->lock);
	if (e->opt.debug && !keep)
		fprintf(stderr, "fuseexport: open: %s: the kernel's cache of "
			"the export dropped\n", !proven ? "nothing proves the "
			"source unchanged" : !same ? "the source changed" :
			"an earlier drop may not have gone through yet");
	return keep;
}

/* A request came on the file handle fh: its open finished, so if that
 * open dropped the kernel's cache after the stamp last changed (or came
 * after one that did), the drop went through */
static void open_seen(struct export *e, uint64_t fh)
{
	uint64_t number = fh >> FH_OPEN_SHIFT;
	uint64_t pending = atomic_load(&e->drop_pending);

	while (pending && number >= pending &&
	       !atomic_compare_exchange_weak(&e->drop_pending, &pending, 0))
		;
}

/* OPEN: writes only on writable exports (O_TRUNC comes as a SETATTR).
 * The file handle says whether the open may write: only such a close
 * flushes the source. */
static int fuse_open(struct export *e, struct request *r, size_t len)
{
	uint32_t flags = r->in.open.flags;
	struct fuse_open_out *out = &r->reply.open;
	uint64_t number = 0;
	int id;

	(void)len;
	if (!e->opt.writable && (flags & O_ACCMODE) != O_RDONLY)
		return -EROFS;
	memset(out, 0, sizeof(*out));
	out->open_flags = e->open_flags;
	/* With a read cache a writer gains nothing from the kernel's pages:
	 * its cached writes go through one at a time (the kernel holds the
	 * inode's lock across each), its direct ones in parallel. So a
	 * writing open takes direct I/O, which drops the pages it writes
	 * over from the kernel's cache; mmap still shares that cache, and
	 * read-only opens keep it. */
	if (e->direct_writers && (flags & O_ACCMODE) != O_RDONLY)
		out->open_flags |= FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES;
	if (e->page_cache != CACHE_NONE && !e->passthrough &&
	    keep_cache(e, &number))
		out->open_flags |= FOPEN_KEEP_CACHE;
	out->fh = number << FH_OPEN_SHIFT |
		  ((flags & O_ACCMODE) != O_RDONLY ? FH_WRITES : 0);
	/* Every open of the inode must pass through, to the same backing
	 * file, and every path of it (read, write, splice, mmap) then goes
	 * there: why_no_passthrough() lets only exports whose writes may
	 * go anywhere do it. */
	if (e->passthrough && (id = open_backing(e)) > 0) {
		out->open_flags = FOPEN_PASSTHROUGH;
		out->backing_id = id;
	} else if (out->fh & FH_WRITES) {
		out->fh |= FH_PAGES;
		atomic_fetch_add(&e->page_writers, 1);
	}
	return sizeof(*out);
}

/* RELEASE: an open whose writes could sit in the kernel's pages is gone,
 * and the kernel wrote them back before it sent this (close, munmap) */
static int fuse_release(struct export *e, struct request *r, size_t len)
{
	(void)len;
	if (r->in.release.fh & FH_PAGES)
		atomic_fetch_sub(&e->page_writers, 1);
	return 0;
}

/* DESTROY: nothing to let go of, and nothing to say */
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
 * says ENOSPC, or writes what fits (a write-back from the kernel's cache:
 * writes what fits and says ENOSPC); a growable one grows. */
static int fuse_write(struct export *e, struct request *r, size_t len)
{
	const struct fuse_write_in *in = &r->in.write;
	uint64_t n = in->size;
	unsigned fua;
	ssize_t res;

	if (len - sizeof(*in) != n)
		return -EINVAL;
	if (!e->opt.writable)
		return -EROFS;
	if (in->offset > (uint64_t)INT64_MAX - n)
		return -EFBIG;
	if (!e->opt.growable) {
		uint64_t size = export_size(e);

		if (in->offset + n > size)
			n = in->offset < size ? size - in->offset : 0;
	}
	/* An O_DIRECT write to a cached export comes through the kernel's
	 * asynchronous direct I/O, which takes a write cut short for EIO:
	 * one that straddles the end is refused whole, ENOSPC */
	if (n < in->size && e->page_cache != CACHE_NONE &&
	    (in->flags & O_DIRECT) && !(in->write_flags & FUSE_WRITE_CACHE))
		n = 0;
	/* the opener's O_DSYNC (O_SYNC has it too) asks for this write to be
	 * durable when it returns; a write-back from the kernel's cache
	 * carries no open flags (the FSYNC that follows does that part) */
	fua = in->flags & O_DSYNC ? WRITE_FUA : 0;
	res = !n && in->size ? -ENOSPC :
	      e->top->write(e->top, r->data, n, in->offset, fua);
	/* A write-back from the kernel's cache that fails loses data the
	 * writer was told is written, as a failed flush does: every later
	 * fsync fails. The kernel takes a short one for a whole one: what
	 * lay past the end is refused outright, so that fsync says so. */
	if ((in->write_flags & FUSE_WRITE_CACHE) && (res < 0 || (uint64_t)res < in->size)) {
		failed_flush(e, res < 0 ? -res : ENOSPC);
		return res < 0 ? res : -ENOSPC;
	}
	if (res < 0)
		return res;
	r->reply.write.size = res;
	r->reply.write.padding = 0;
	return sizeof(r->reply.write);
}

/* FLUSH (every close): what a writing open wrote reaches the disk; a
 * read-only close neither flushes nor takes another's error. Under a
 * volatile write cache a close is no flush at all, as no disk's cache
 * is emptied by a program closing a file: only fsync, fdatasync and FUA
 * writes are, so a writer that never syncs loses its data in a crash. */
static int fuse_flush(struct export *e, struct request *r, size_t len)
{
	(void)len;
	if (e->volatile_cache)
		return 0;
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
	if (!e->opt.writable)
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

/* LSEEK: SEEK_DATA and SEEK_HOLE as the source answers them, to an open
 * whose writes cannot sit in the kernel's pages */
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
	/* The kernel writes no dirty page back before LSEEK, so what an
	 * open wrote into its pages (a cached write, a store to a shared
	 * mapping) may lie over what is a hole in the source yet: while
	 * such an open is live every byte is data, to every open (a reader
	 * shares the writer's pages), as the kernel's own lseek has it where
	 * a file system has no SEEK_DATA. With none, or all passed through
	 * (whose pages are the source's), the source answers. */
	if (in->fh & FH_PAGES || atomic_load(&e->page_writers))
		res = in->whence == SEEK_DATA ? (int64_t)in->offset : (int64_t)size;
	else
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

/* ===== The dispatcher ===== */
/*
 * Holds: the opcode table; serve(), which checks a request and builds
 * every reply header on the read(2) path (ring_serve checks an io_uring
 * request's sizes first, and builds the empty reply COMMIT_AND_FETCH needs
 * for one that wants none); reply_done(), which lets go of map_lock once
 * a READ's reply is sent. Uses: the handlers, halt. Used by: both
 * transports and fuseexport_request.
 */

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
	[FUSE_RELEASE] = { "RELEASE", sizeof(struct fuse_release_in), fuse_release, false },
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

/* A request on a file handle (READ, WRITE, FLUSH...: each holds it
 * first) shows that its open finished */
static void request_on_fh(struct export *e, const struct request *r)
{
	switch (r->in.hdr.opcode) {
	case FUSE_READ: case FUSE_WRITE: case FUSE_FLUSH: case FUSE_RELEASE:
	case FUSE_FSYNC: case FUSE_FALLOCATE: case FUSE_LSEEK:
		open_seen(e, r->in.read.fh);
	}
}

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
	else if (!atomic_load(&e->initialized) && in->opcode != FUSE_INIT)
		res = -EIO;
	else {
		request_on_fh(e, r);
		res = op->handle(e, r, oplen);
	}

	if (e->opt.debug)
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

/* ===== The log of a detached server ===== */
/*
 * The log of a detached server: what it writes on stderr goes, a line at a
 * time, to syslog where /dev/log takes datagrams, else to the kernel's log
 * (/dev/kmsg, as initramfs tools do), tagged fuseexport[PID]; --log=FILE
 * appends it to FILE instead, stamped with the time. A thread moves the
 * lines from a pipe that is the server's stderr; at exit the pipe is
 * closed and what is left drained.
 *
 * Holds: log_fd and log_thread, the route, the log thread, start_log and
 * stop_log. Uses: nothing of the export. Used by: tell_ready (start_log),
 * main (log_fd, --log=FILE).
 */
static int log_fd = -1;			/* --log=FILE, opened before detaching */
static pthread_t log_thread;

enum log_route { TO_KMSG, TO_SYSLOG, TO_FILE };

/* Where the log goes: FILE (log_fd), else a datagram socket connected to
 * /dev/log, else /dev/kmsg; returns its fd, or -1 */
static int open_log_route(enum log_route *route)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX, .sun_path = "/dev/log" };
	int out;

	*route = TO_FILE;
	if (log_fd >= 0)
		return log_fd;
	out = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	*route = TO_SYSLOG;
	if (out >= 0 && connect(out, (struct sockaddr *)&sa, sizeof(sa)) == 0)
		return out;
	if (out >= 0)
		close(out);
	*route = TO_KMSG;
	return open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
}

/* One line in FILE, stamped with the local time as syslog would, in one
 * write(2): servers that share FILE (O_APPEND) never mix their lines, as
 * they did where dprintf wrote a line and its newline apart (musl) */
static void file_line(int out, const char *line, size_t len)
{
	char when[40] = "", msg[4200];
	struct timespec now;
	struct tm tm;
	int n;

	clock_gettime(CLOCK_REALTIME, &now);
	if (localtime_r(&now.tv_sec, &tm))
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S%z ", &tm);
	n = snprintf(msg, sizeof(msg) - 1, "%sfuseexport[%d]: %.*s", when,
		     (int)getpid(), (int)len, line);
	if (n < 0)
		return;
	n = (size_t)n < sizeof(msg) - 1 ? n : (int)sizeof(msg) - 2;
	msg[n++] = '\n';
	if (write(out, msg, n) < 0) {
		/* a full file system: nowhere left to say it */
	}
}

/* The kernel refuses a /dev/kmsg record of about 1 KiB and over (EINVAL)
 * whole: a longer line goes in pieces of this many bytes */
enum { KMSG_PIECE = 800 };

/* Send one line, less its "fuseexport: ", where *route says: at the
 * level its "<N>" before that says (as systemd takes a service's stderr),
 * else as a warning. A syslog daemon that was restarted has a new socket:
 * the old one's sends fail (ECONNREFUSED), so connect again, once a line. */
static void log_line(int *out, enum log_route *route, const char *line,
		     size_t len)
{
	static const char prefix[] = "fuseexport: ";
	char msg[4200];
	size_t k;
	bool again = true;
	int n, level = LOG_WARNING;

	if (len >= 3 && line[0] == '<' && line[1] >= '0' && line[1] <= '7' &&
	    line[2] == '>')
		level = line[1] - '0', line += 3, len -= 3;
	if (len >= sizeof(prefix) - 1 && !memcmp(line, prefix, sizeof(prefix) - 1))
		line += sizeof(prefix) - 1, len -= sizeof(prefix) - 1;
	if (*route == TO_FILE)
		return file_line(*out, line, len);
	while (len && *out >= 0) {
		k = *route == TO_SYSLOG || len < KMSG_PIECE ? len : KMSG_PIECE;
		/* the daemon facility for syslog; the kernel's log takes a
		 * level alone, and a record without its newline stays open
		 * for a continuation, unseen by dmesg until the next one */
		n = snprintf(msg, sizeof(msg), "<%d>fuseexport[%d]: %.*s%s",
			     (*route == TO_SYSLOG ? LOG_DAEMON : 0) | level,
			     (int)getpid(), (int)k,
			     line, *route == TO_SYSLOG ? "" : "\n");
		if (n > 0 && write(*out, msg, (size_t)n < sizeof(msg) ? (size_t)n :
				   sizeof(msg) - 1) < 0 && *route == TO_SYSLOG &&
		    again) {
			close(*out);
			*out = open_log_route(route);
			again = false;
			continue;	/* the same line, the new way */
		}
		line += k;
		len -= k;
	}
}

static void *log_loop(void *arg)
{
	int in = (int)(intptr_t)arg, out;
	char buf[4096], *nl;
	size_t have = 0, len;
	enum log_route route;
	ssize_t n;

	out = open_log_route(&route);
	do {
		n = read(in, buf + have, sizeof(buf) - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n > 0)
			have += n;
		/* whole lines; at the end, or with a line too long, the rest */
		while ((nl = memchr(buf, '\n', have)) ||
		       (have && (n <= 0 || have == sizeof(buf)))) {
			len = nl ? (size_t)(nl - buf) : have;
			log_line(&out, &route, buf, len);
			len += nl != NULL;
			memmove(buf, buf + len, have - len);
			have -= len;
		}
	} while (n > 0 || (n < 0 && errno == EINTR));
	close(in);
	if (out >= 0)
		close(out);
	return NULL;
}

/* At exit: close the pipe and let the thread pass on what is left */
static void stop_log(void)
{
	int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
	struct timespec end;

	fflush(stderr);
	/* fd 2 stays taken, so that no file opened meanwhile becomes it */
	if (null < 0 || dup2(null, 2) < 0)
		close(2);
	if (null >= 0)
		close(null);
	clock_gettime(CLOCK_REALTIME, &end);
	end.tv_sec += 2;		/* a child that kept stderr holds it */
	pthread_timedjoin_np(log_thread, NULL, &end);
}

/* Make stderr the pipe to log_loop; else FILE as it is, or /dev/null */
static void start_log(int null)
{
	int fds[2];

	if (pipe2(fds, O_CLOEXEC) < 0 ||
	    (errno = pthread_create(&log_thread, NULL, log_loop,
				    (void *)(intptr_t)fds[0]))) {
		dup2(log_fd >= 0 ? log_fd : null, 2);
		return;
	}
	dup2(fds[1], 2);
	close(fds[1]);
	atexit(stop_log);
}

/* ===== Going live ===== */
/*
 * Holds: init_done(), the work after INIT's reply; tell_ready(), which
 * tells the waiting parent the export is live; the notifications to the
 * kernel (the size, a drop of its cache, which never comes from a serving
 * thread); source_reconnected, which an NBD source calls after a
 * reconnect; and what both transports' threads share (request_buffer,
 * serving_thread). Uses: the log (start_log), the export and its stack,
 * start_rings. Used by: the read(2) transport (init_done, tell_ready),
 * both transports (request_buffer, serving_thread), the control FIFO and
 * run_export (drop_kernel_cache), hear_reconnects (source_reconnected),
 * which hands it to the NBD source.
 */

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
		if (!e->opt.run_command)	/* else fuseexport stays in front */
			start_log(null);
		if (null > 2)
			close(null);
	}
	if (write(fd, "", 1) < 0) {
		/* the parent is gone: nobody is left to tell */
	}
	close(fd);
}

/* Start a ring per possible CPU; the kernel takes requests through them
 * once every queue has registered. Returns 0 or -errno. */
static int start_rings(struct export *e);

/* Tell the kernel the export's size. With a writeback cache it keeps the
 * size it has, 0 from the mount, and never takes ours from GETATTR; a
 * store of the last byte (the kernel wants one at least) raises it.
 * Returns 0 or -errno. */
static int notify_size(struct export *e)
{
	uint64_t size = export_size(e);
	struct fuse_notify_store_out store = {
		.nodeid = FUSE_ROOT_ID, .offset = size - 1, .size = 1 };
	struct fuse_out_header out = {
		sizeof(out) + sizeof(store) + 1, FUSE_NOTIFY_STORE, 0 };
	char last;
	struct iovec iov[3] = { { &out, sizeof(out) }, { &store, sizeof(store) },
				{ &last, 1 } };
	ssize_t r;

	if (!size)
		return 0;
	if ((r = e->top->read(e->top, &last, 1, size - 1)) != 1)
		return r < 0 ? (int)r : -EIO;
	return writev(e->fuse_fd, iov, 3) < 0 ? -errno : 0;
}

/* Drop what the kernel caches of the export, its pages and attributes,
 * when the source's bytes may have changed behind its back. Never from a
 * serving thread: the kernel waits there for pages that READs have
 * locked, and those READs wait for a serving thread. Returns 0 or -errno
 * (-ENOENT: the kernel holds nothing of it). */
static int drop_kernel_cache(struct export *e)
{
	struct fuse_notify_inval_inode_out inval = {
		.ino = FUSE_ROOT_ID, .off = 0, .len = 0 };	/* all of it */
	struct fuse_out_header out = {
		sizeof(out) + sizeof(inval), FUSE_NOTIFY_INVAL_INODE, 0 };
	struct iovec iov[2] = { { &out, sizeof(out) }, { &inval, sizeof(inval) } };

	if (!atomic_load(&e->init_answered))
		return 0;	/* nothing cached yet */
	if (writev(e->fuse_fd, iov, 2) < 0)
		return -errno;
	if (e->opt.debug)
		fprintf(stderr, "fuseexport: the source may have changed: "
			"the kernel's cache of it dropped\n");
	return 0;
}

/* An NBD source made a connection again: its server may serve other
 * bytes now. run_export's loop, in the main thread, drops the kernel's
 * cache (see above). */
static void source_reconnected(void *arg)
{
	struct export *e = arg;

	atomic_store(&e->stale, true);
	kill(getpid(), SIGUSR1);
}

/* After the INIT reply: register the passthrough backing file, start the
 * rings, say which path the export takes, and tell the parent it is live.
 * Returns 0, or -EPROTO to halt. */
static int init_done(struct export *e)
{
	int id = e->passthrough ? open_backing(e) : 0, res;

	if (id < 0 && e->opt.want_passthrough == ON)
		return halt(e, "--passthrough=on: the kernel refused the source "
			    "as backing file: %s", strerror(-id));
	if (e->opt.debug && id < 0)
		fprintf(stderr, "fuseexport: passthrough off (the kernel refused "
			"the source as backing file: %s): every read and write "
			"goes through /dev/fuse\n", strerror(-id));
	else if (e->opt.debug && !e->passthrough)
		fprintf(stderr, "fuseexport: passthrough off (%s): every read "
			"and write goes through /dev/fuse\n", e->no_passthrough);
	else if (e->opt.debug)
		fprintf(stderr, "fuseexport: passthrough on: %s go straight to "
			"the source\n", e->opt.writable ? "reads, writes, splice "
			"and mmap" : "reads, splice and mmap");
	if (e->opt.debug && !e->passthrough)
		fprintf(stderr, "fuseexport: cache: %s\n",
			e->page_cache == CACHE_NONE ?
			"none: direct I/O, the source's page cache alone" :
			e->page_cache == CACHE_READ ? "read: the kernel caches the "
			"export's pages, writes go through to the source" :
			"writeback: the kernel caches the export's pages and "
			"writes them back; fsync or close makes them durable");
	if (e->page_cache == CACHE_WRITEBACK && (res = notify_size(e)) < 0)
		return halt(e, "halting: telling the kernel the size: %s",
			    strerror(-res));
	if (e->uring && (res = start_rings(e)) < 0)
		return halt(e, "halting: starting the io_uring queues: %s",
			    strerror(-res));
	if (e->opt.debug)
		fprintf(stderr, "fuseexport: transport: %s\n", e->uring ?
			"FUSE over io_uring, a ring per CPU" : "read(2) and "
			"write(2) on /dev/fuse, a thread per queue");
	atomic_store(&e->init_answered, true);
	tell_ready(e);		/* if every queue runs already */
	return 0;
}

/* A request's payload buffer: page-aligned, for O_DIRECT to the source,
 * and locked in memory where we may, so that serving a request never
 * waits on the reclaim that may be waiting on us (a loop device over a
 * cached export). Returns it, or NULL. */
static char *request_buffer(void)
{
	char *b = aligned_alloc(4096, DATA_SIZE);

	if (b)
		mlock(b, DATA_SIZE);	/* RLIMIT_MEMLOCK may say no */
	return b;
}

/* A serving thread may be needed to clean pages (a loop device over the
 * export): let it dip into reserves, where the kernel lets us */
static void serving_thread(void)
{
	prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0);
}

/* ===== The read(2) transport ===== */
/*
 * The read(2) transport: a thread per queue, each reading requests from
 * its own /dev/fuse fd and writing the replies back to it.
 *
 * Holds: struct queue, unspill, spinning for the next request
 * (next_request, count_spin_budget), queue_loop, start_queues. Uses: the
 * dispatcher, init_done, tell_ready, request_buffer, serving_thread.
 * Used by: run_export
 * (start_queues, count_spin_budget), fuseexport_request (unspill).
 */

/* A queue: a thread reading requests from its own /dev/fuse fd */
struct queue {
	struct export *e;
	int fd;
	pthread_t thread;
	int spin_score;		/* > 0: spinning has paid lately */
	bool nonblocking;	/* the fd is, while the queue spins */
	struct request req;
};

/* read(2) put a request's first REQ_HEAD bytes in r->in and the rest in
 * r->data: an op struct longer than a WRITE's (INIT, SETATTR) is fetched
 * back whole */
static void unspill(struct request *r, size_t len)
{
	if (len > REQ_HEAD && r->in.hdr.opcode != FUSE_WRITE)
		memcpy((char *)&r->in + REQ_HEAD, r->data,
		       min_u64(len, sizeof(r->in)) - REQ_HEAD);
}

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000ULL + t.tv_nsec;
}

/* Read the next request into iov. A queue with nothing to read may spin
 * up to SPIN_NS on a non-blocking fd before it sleeps in a blocking read,
 * which saves a wake-up from idle per request: but only while it pays (the
 * queue's last requests came within that time) and while an idle CPU is
 * there for it (spin_budget). Sleeping, the fd blocks again, so that the
 * kernel wakes one queue per request. Returns readv(2)'s result. */
static ssize_t next_request(struct export *e, struct queue *q, struct iovec *iov)
{
	uint64_t start;
	ssize_t n;

	if (q->spin_score > 0 &&
	    atomic_fetch_add(&e->spinners, 1) < atomic_load(&e->spin_budget)) {
		if (!q->nonblocking && fcntl(q->fd, F_SETFL, O_NONBLOCK) == 0)
			q->nonblocking = true;
		start = now_ns();
		do
			n = readv(q->fd, iov, 2);
		while (n < 0 && errno == EAGAIN && now_ns() - start < SPIN_NS);
		atomic_fetch_add(&e->spin_ns, now_ns() - start);
		atomic_fetch_sub(&e->spinners, 1);
		if (n >= 0 || errno != EAGAIN) {
			q->spin_score += q->spin_score < 8;
			return n;
		}
		q->spin_score -= 2;	/* it did not pay: spin less */
	} else if (q->spin_score > 0) {
		atomic_fetch_sub(&e->spinners, 1);
	}
	if (q->nonblocking && fcntl(q->fd, F_SETFL, 0) == 0)
		q->nonblocking = false;
	start = now_ns();
	n = readv(q->fd, iov, 2);
	if (e->opt.want_spin != OFF && now_ns() - start < SPIN_NS)
		q->spin_score = 2;	/* a spin would have caught it */
	return n;
}

/* Count how many queues may spin: the idle CPUs over the last interval,
 * the time spent spinning included (it is idle time otherwise), from
 * /proc/stat; none where there is no /proc */
static void count_spin_budget(struct export *e)
{
	unsigned long long v[8] = { 0 }, idle, total = 0;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	uint64_t now = now_ns(), spun = atomic_exchange(&e->spin_ns, 0);
	FILE *f = fopen("/proc/stat", "re");
	int i, budget = 0;

	if (!f || fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0],
			 &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) != 8) {
		if (f)
			fclose(f);
		atomic_store(&e->spin_budget, 0);
		return;
	}
	fclose(f);
	for (i = 0; i < 8; i++)
		total += v[i];
	idle = v[3] + v[4];
	if (e->stat_at && total > e->stat_total && now > e->stat_at) {
		/* in thousandths of a CPU */
		uint64_t spare = cpus * 1000 * (idle - e->stat_idle) /
				 (total - e->stat_total) +
				 spun * 1000 / (now - e->stat_at);
		budget = (spare + 500) / 1000;
		budget = budget > cpus - 1 ? cpus - 1 : budget;
	}
	atomic_store(&e->spin_budget, budget);
	e->stat_idle = idle;
	e->stat_total = total;
	e->stat_at = now;
}

/* A queue: read a request, serve it, reply on the same fd, until the
 * kernel says the export is gone (ENODEV) or it halts */
static void *queue_loop(void *arg)
{
	struct queue *q = arg;
	struct export *e = q->e;
	struct request *r = &q->req;
	struct iovec in[2] = { { &r->in, REQ_HEAD }, { r->data, DATA_SIZE } };

	serving_thread();
	while (!atomic_load(&e->halted)) {
		ssize_t n = next_request(e, q, in);
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

	e->nqueues = e->opt.queues;
	e->queue = calloc(e->nqueues, sizeof(*e->queue));
	if (!e->queue)
		die("queues:");
	/* every fd and buffer first: a failure then leaves no thread that
	 * could have answered INIT */
	for (i = 0; i < e->nqueues; i++) {
		struct queue *q = &e->queue[i];
		uint32_t session = e->fuse_fd;

		q->e = e;
		q->fd = e->fuse_fd;
		q->req.data = request_buffer();
		q->req.zero_copy = true;
		if (!q->req.data)
			die("queue buffer:");
		if (i > 0 && ((q->fd = open("/dev/fuse", O_RDWR | O_CLOEXEC)) < 0 ||
			      ioctl(q->fd, FUSE_DEV_IOC_CLONE, &session) < 0)) {
			if (e->opt.queues_given)
				die("cloning /dev/fuse for queue %u:", i);
			if (e->opt.debug)
				fprintf(stderr, "fuseexport: %u queues: cloning "
					"/dev/fuse: %s\n", i, strerror(errno));
			if (q->fd >= 0)
				close(q->fd);
			free(q->req.data);
			e->nqueues = i;
			break;
		}
	}
	atomic_store(&e->running, e->nqueues);
	for (i = 0; i < e->nqueues; i++) {
		errno = pthread_create(&e->queue[i].thread, NULL, queue_loop,
				       &e->queue[i]);
		if (errno)
			die("starting queue %u:", i);
	}
	/* the parent hears we are live once INIT is answered (init_done)
	 * and every queue runs (here), whichever comes last */
	atomic_store(&e->ready_fd, e->ready_pending);
	if (atomic_load(&e->init_answered))
		tell_ready(e);
}

/* ===== The io_uring transport ===== */
/*
 * The io_uring transport: a ring per possible CPU, whose entries carry
 * requests and replies; serve() handles them as it does the queues'.
 *
 * Holds: struct ring and its entries, ring_setup, ring_command,
 * ring_serve, ring_loop, possible_cpus, start_rings. Uses: fuseexport.h's
 * io_uring ABI, the dispatcher, request_buffer, serving_thread. Used by:
 * init_done (start_rings), run_export (joins the rings' threads).
 */

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
		ent->payload = request_buffer();
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

	serving_thread();
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
			    cqe->res != -ECONNABORTED &&
			    e->opt.want_io_uring == ON)
				halt(e, "--io-uring=on: the kernel refused a queue: %s",
				     strerror(-cqe->res));
		}
		__atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
	}
	if (atomic_load(&e->halted))
		kill(getpid(), SIGUSR1);	/* wake main() */
	return NULL;
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

/* ===== Options ===== */
/*
 * Options: the command line, -o lists and mount(8)'s helper calls, all
 * through one table and set_option(). Parsing never exits: it returns
 * what is wrong in why (WHY_SIZE bytes, "<what>: <why>"), so a harness
 * can feed it anything; main() dies with it. A repeated option takes its
 * last value, as mount(8) has it; options that contradict each other are
 * refused with one line naming both.
 *
 * Holds: complain and the value parsers, option_table,
 * set_option, the contradictions, parse_options, options_or_exit and the
 * fuzzer's entry. Uses: scan_number, parse_rule, usage_text. Used by:
 * main and fuseexport_new (options_or_exit).
 */
enum { WHY_SIZE = 512 };

/* Say what is wrong in why; returns false, the parsers' verdict */
static __attribute__((format(printf, 2, 3)))
bool complain(char *why, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, WHY_SIZE, fmt, ap);
	va_end(ap);
	return false;
}

/* A byte count with an optional K, M, G or T suffix from min to max into
 * *v: true, or false with why */
static bool parse_number(const char *what, const char *s, uint64_t min,
			 uint64_t max, uint64_t *v, char *why)
{
	if (!scan_number(s, v) || *v > max || *v < min)
		return complain(why, "%s: '%s' is not a number from %llu to %llu", what,
			     s, (unsigned long long)min, (unsigned long long)max);
	return true;
}

/* auto, on or off into *mode: true, or false with why */
static bool parse_mode(const char *what, const char *s, int *mode, char *why)
{
	if (!strcmp(s, "auto"))
		*mode = AUTO;
	else if (!strcmp(s, "on"))
		*mode = ON;
	else if (!strcmp(s, "off"))
		*mode = OFF;
	else
		return complain(why, "%s: '%s' is not auto, on or off", what, s);
	return true;
}

/* auto, none, read or writeback into *cache (CACHE_*): true, or false
 * with why */
static bool parse_cache(const char *what, const char *s, int *cache, char *why)
{
	for (*cache = CACHE_NONE; *cache <= CACHE_WRITEBACK &&
	     strcmp(s, cache_names[*cache]); ++*cache)
		;
	if (!strcmp(s, "auto"))
		*cache = CACHE_AUTO;
	else if (*cache > CACHE_WRITEBACK)
		return complain(why, "%s: '%s' is not auto, none, read or "
			     "writeback", what, s);
	return true;
}

/* The options, one row each: --NAME (NULL: none), NAME in an -o list
 * (NULL: none), the short option or OPT_ id, whether it takes a value, the
 * value a bare -o NAME stands for, and whether it means anything without a
 * mount (--partitions, --commit). Both parsers apply them through
 * set_option(), so each is parsed in one place. A row without --NAME is
 * another -o name of the row above. */
enum { OPT_ALLOW_OTHER = 256, OPT_PASSTHROUGH, OPT_IO_URING, OPT_OFFSET,
       OPT_SIZE, OPT_READ_ONLY, OPT_PARTITION, OPT_PARTITIONS, OPT_SNAPSHOT,
       OPT_COMMIT, OPT_CACHE, OPT_SPIN, OPT_FAULT, OPT_SEED, OPT_WRITE_CACHE,
       OPT_CONTROL, OPT_RETRY, OPT_RUN, OPT_LOG, OPT_SYNC, OPT_ASYNC };
static const struct option_row {
	const char *name, *mount_name;
	int id;
	bool value;
	const char *bare;
	bool unmounted;
} option_table[] = {
	{ "writable", "rw", 'w', false, NULL, false },
	{ NULL, "ro", OPT_READ_ONLY, false, NULL, false },
	{ "growable", "growable", 'g', false, NULL, false },
	{ NULL, "sync", OPT_SYNC, false, NULL, false },
	{ NULL, "async", OPT_ASYNC, false, NULL, false },
	{ "foreground", NULL, 'f', false, NULL, true },
	{ "debug", NULL, 'd', false, NULL, true },
	{ "queues", "queues", 'q', true, NULL, true },
	{ "allow-other", "allow_other", OPT_ALLOW_OTHER, true, "on", false },
	{ "passthrough", "passthrough", OPT_PASSTHROUGH, true, NULL, false },
	{ "io-uring", "io_uring", OPT_IO_URING, true, NULL, false },
	/* mount(8) takes offset= and sizelimit= for a loop device of its
	 * own: window_offset= and window_size= pass it untouched */
	{ "offset", "window_offset", OPT_OFFSET, true, NULL, false },
	{ NULL, "offset", OPT_OFFSET, true, NULL, false },
	{ "size", "window_size", OPT_SIZE, true, NULL, false },
	{ NULL, "size", OPT_SIZE, true, NULL, false },
	/* a rule has commas, which end an -o option: --fault only */
	{ "fault", NULL, OPT_FAULT, true, NULL, false },
	{ "seed", "seed", OPT_SEED, true, NULL, false },
	{ "write-cache", "write_cache", OPT_WRITE_CACHE, true, NULL, false },
	{ "control", "control", OPT_CONTROL, true, NULL, false },
	{ "retry", "retry", OPT_RETRY, true, NULL, true },
	{ "run", NULL, OPT_RUN, true, NULL, false },
	{ "log", "log", OPT_LOG, true, NULL, false },
	{ "partition", "partition", OPT_PARTITION, true, NULL, false },
	{ "partitions", NULL, OPT_PARTITIONS, false, NULL, true },
	{ "snapshot", "snapshot", OPT_SNAPSHOT, true, "", false },
	{ "commit", NULL, OPT_COMMIT, false, NULL, true },
	{ "cache", "cache", OPT_CACHE, true, NULL, false },
	{ "spin", "spin", OPT_SPIN, true, NULL, false },
	{ "help", NULL, 'h', false, NULL, true },
	{ "version", NULL, 'V', false, NULL, true },
};
#define N_OPTIONS (sizeof(option_table) / sizeof(option_table[0]))

/* What a parse has seen so far: how each row was given (0: not; GIVEN_LONG
 * or GIVEN_MOUNT: as -o NAME), its name as given for messages, and the
 * text -h or -V asks to be printed */
enum { GIVEN_LONG = 1, GIVEN_MOUNT };
struct parse {
	unsigned char given[N_OPTIONS];
	char names[N_OPTIONS][24];
	const char *print;
	const char *bare_next;	/* the argument after a bare --snapshot (or
				 * other optional value), if any */
	const char *bare_name;
};

/* Apply one option; what names it in messages ("--queues", "-o queues").
 * Returns true, or false with why. */
static bool set_option(struct options *o, struct parse *p, int id,
		       const char *value, const char *what, char *why)
{
	struct fault_rule *rule, **last;
	uint64_t v = 0;
	int mode = OFF;
	char text[WHY_SIZE];

	switch (id) {
	case 'g':
		o->growable = true;
		/* fall through */
	case 'w':
		o->writable = true;
		break;
	case OPT_READ_ONLY:
		o->writable = o->growable = false;
		break;
	case OPT_SYNC:
	case OPT_ASYNC:
		o->sync = id == OPT_SYNC;
		break;
	case 'd':
		o->debug = true;
		/* fall through */
	case 'f':
		o->foreground = true;
		break;
	case 'q':
		if (!parse_number(what, value, 1, MAX_QUEUES, &v, why))
			return false;
		o->queues = v;
		o->queues_given = true;
		break;
	case OPT_ALLOW_OTHER:
	case OPT_PASSTHROUGH:
	case OPT_IO_URING:
	case OPT_SPIN:
		if (!parse_mode(what, value, &mode, why))
			return false;
		*(id == OPT_ALLOW_OTHER ? &o->want_allow_other :
		  id == OPT_PASSTHROUGH ? &o->want_passthrough :
		  id == OPT_IO_URING ? &o->want_io_uring :
		  &o->want_spin) = mode;
		if (id == OPT_SPIN && mode == ON)
			return complain(why, "%s: '%s' is not auto or off", what, value);
		break;
	case OPT_OFFSET:
		if (!parse_number(what, value, 0, INT64_MAX, &o->offset, why))
			return false;
		break;
	case OPT_SIZE:
		if (!parse_number(what, value, 1, INT64_MAX, &o->window, why))
			return false;
		break;
	case OPT_FAULT:
		rule = parse_rule(value, text, sizeof(text));
		if (!rule)
			return complain(why, "%s=%s: %s", what, value, text);
		for (last = &o->rules; *last; last = &(*last)->next)
			;
		*last = rule;
		break;
	case OPT_SEED:
		if (!parse_number(what, value, 0, UINT64_MAX, &o->seed, why))
			return false;
		break;
	case OPT_WRITE_CACHE:
		if (strcmp(value, "volatile") && strcmp(value, "none"))
			return complain(why, "%s: '%s' is not volatile or none", what, value);
		o->write_cache = !strcmp(value, "volatile");
		break;
	case OPT_CONTROL:
		if (!*value)
			return complain(why, "%s: needs a path", what);
		o->control_path = value;
		break;
	case OPT_RETRY:
		if (!parse_number(what, value, 0, 86400, &v, why))
			return false;
		o->retry = v;
		break;
	case OPT_LOG:
		if (!*value)
			return complain(why, "%s: needs a path", what);
		o->log_path = value;
		break;
	case OPT_RUN:
		if (!*value)
			return complain(why, "%s: needs a command", what);
		o->run_command = value;
		break;
	case OPT_PARTITION:
		if (!parse_number(what, value, 1, PART_MAX, &v, why))
			return false;
		o->partition = v;
		break;
	case OPT_PARTITIONS:
		o->list_partitions = true;
		break;
	case OPT_SNAPSHOT:
		o->snapshot = o->writable = true;
		o->snapshot_file = *value ? value : NULL;
		break;
	case OPT_COMMIT:
		o->commit = true;
		break;
	case OPT_CACHE:
		if (!parse_cache(what, value, &o->cache, why))
			return false;
		break;
	case 'h':
		p->print = usage_text;
		break;
	case 'V':
		p->print = "fuseexport " VERSION "\n";
		break;
	}
	return true;
}

/* Note that row was given, and how, for the checks at the end */
static void given(struct parse *p, const struct option_row *row, int how)
{
	size_t i = row - option_table;

	p->given[i] = how;
	if (how == GIVEN_MOUNT)
		snprintf(p->names[i], sizeof(p->names[i]), "-o %s", row->mount_name);
	else if (row->id < 256)
		snprintf(p->names[i], sizeof(p->names[i]), "-%c", row->id);
	else
		snprintf(p->names[i], sizeof(p->names[i]), "--%s", row->name);
}

/* The name the option id was given by (the last of its rows given),
 * or NULL if it was not */
static const char *given_as(const struct parse *p, int id)
{
	const char *name = NULL;
	size_t i;

	for (i = 0; i < N_OPTIONS; i++)
		if (option_table[i].id == id && p->given[i])
			name = p->names[i];
	return name;
}

/* Take a mount-style option list (-o, and mount(8)'s helper calls): true,
 * or false with why */
static bool parse_mount_options(struct options *o, struct parse *p, char *list,
				char *why)
{
	static const char *const ignored[] = {
		"defaults", "nofail", "_netdev", "dev", "nodev", "suid", "nosuid",
		"exec", "noexec", "auto", "noauto", "user", "nouser", "users",
		"owner", "group", "atime", "noatime", "relatime", "norelatime",
		"strictatime", "nostrictatime", "diratime", "nodiratime",
		"lazytime", "nolazytime", "dirsync", "mand", "nomand", "silent",
		"loud", "iversion", "noiversion", "symfollow", "nosymfollow",
		"comment", NULL
	};
	char *opt, *value, *next, what[64];
	const struct option_row *row;
	bool quoted;
	size_t n;
	int i;

	for (opt = list; opt; opt = next) {
		/* a comma inside double quotes is the value's, as libmount
		 * has it: an fstab line's control="/a,b" reaches us so */
		for (next = opt, quoted = false; *next && (quoted || *next != ',');
		     next++)
			quoted ^= *next == '"';
		if (*next)
			*next++ = 0;
		else
			next = NULL;
		value = strchr(opt, '=');
		if (value)
			*value++ = 0;
		if (value && (n = strlen(value)) >= 2 && value[0] == '"' &&
		    value[n - 1] == '"') {
			value[n - 1] = 0;
			value++;
		}
		for (i = 0; ignored[i] && strcmp(opt, ignored[i]); i++)
			;
		if (!*opt || ignored[i] || !strncmp(opt, "x-", 2))
			continue;	/* generic, for mount(8) or none */
		for (row = option_table; row < option_table + N_OPTIONS; row++)
			if (row->mount_name && !strcmp(opt, row->mount_name))
				break;
		if (row == option_table + N_OPTIONS || (value && !row->value) ||
		    (!value && row->value && !row->bare))
			return complain(why, "-o %s%s%s: unknown option (see --help)",
				     opt, value ? "=" : "", value ? value : "");
		snprintf(what, sizeof(what), "-o %s", opt);
		given(p, row, GIVEN_MOUNT);
		if (!set_option(o, p, row->id, value ? value : row->bare, what, why))
			return false;
	}
	return true;
}

/* Called as mount.fuseexport or mount.fuse.fuseexport, by mount(8)? */
static bool mount_helper(const char *argv0)
{
	const char *name = strrchr(argv0, '/');

	name = name ? name + 1 : argv0;
	return !strcmp(name, "mount.fuseexport") ||
	       !strcmp(name, "mount.fuse.fuseexport");
}

/* Options that cannot go together, each pair with why not */
static const struct {
	int a, b;
	const char *why;
} contradictions[] = {
	{ OPT_READ_ONLY, 'w', "a read-only export is not writable" },
	{ OPT_READ_ONLY, 'g', "a read-only export does not grow" },
	{ OPT_READ_ONLY, OPT_SNAPSHOT, "a snapshot is a writable export (the "
	  "source itself is never written)" },
	{ OPT_READ_ONLY, OPT_WRITE_CACHE, "a write cache needs writes" },
	{ 'g', OPT_SNAPSHOT, "a snapshot keeps the source's size" },
	{ 'g', OPT_OFFSET, "a window keeps its size" },
	{ 'g', OPT_SIZE, "a window keeps its size" },
	{ 'g', OPT_PARTITION, "a partition keeps its size" },
	{ OPT_PARTITION, OPT_OFFSET, "the partition table gives the window" },
	{ OPT_PARTITION, OPT_SIZE, "the partition table gives the window" },
	{ OPT_PARTITIONS, OPT_COMMIT, "one lists the table, the other commits "
	  "a snapshot" },
	/* FILE would be made and stay empty */
	{ 'f', OPT_LOG, "a server in the foreground keeps its stderr" },
	{ 'd', OPT_LOG, "a server in the foreground keeps its stderr" },
	{ OPT_RUN, OPT_LOG, "under --run the server keeps fuseexport's stderr" },
};

/* The checks once every option is in: contradictions, then the arguments.
 * Returns true, or false with why. */
static bool check_options(struct options *o, struct parse *p, int nargs,
			  char *why)
{
	const char *a, *b, *alone = o->list_partitions ? "--partitions" :
				   o->commit ? "--commit" : NULL;
	size_t i;
	int want = alone ? 1 : 2;

	for (i = 0; i < sizeof(contradictions) / sizeof(contradictions[0]); i++) {
		a = given_as(p, contradictions[i].a);
		b = given_as(p, contradictions[i].b);
		/* --write-cache=none is no cache */
		if (contradictions[i].b == OPT_WRITE_CACHE && !o->write_cache)
			b = NULL;
		if (a && b)
			return complain(why, "%s and %s: contradict each other: %s",
				     a, b, contradictions[i].why);
	}
	for (i = 0; alone && i < N_OPTIONS; i++)
		if (p->given[i] && !option_table[i].unmounted &&
		    !(o->commit && option_table[i].id == OPT_SNAPSHOT))
			return complain(why, "%s: does nothing with %s, which mounts "
				     "nothing", p->names[i], alone);
	if (nargs == want + 1 && p->bare_next)
		return complain(why, "%s %s: too many arguments: give a value with "
			     "an = (%s=%s)", p->bare_name, p->bare_next,
			     p->bare_name, p->bare_next);
	if (nargs > want && alone)
		return complain(why, "%s: takes SOURCE alone (it mounts nothing): "
			     "too many arguments", alone);
	if (nargs != want)
		return complain(why, "%s: expected %s (see --help)", nargs < want ?
			     "too few arguments" : "too many arguments",
			     want == 1 ? "SOURCE alone" : "SOURCE and MOUNTPOINT");
	if (o->commit && !o->snapshot_file)
		return complain(why, "--commit: needs --snapshot=FILE");
	return true;
}

/* What parse_options() found: go on, what is wrong (in why), print
 * p.print and exit 0 (-h, -V), or exit 0 (mount -f: fake it) */
enum { PARSED, PARSE_BAD, PARSE_PRINT, PARSE_FAKE };

/* getopt_long()'s table: the rows of option_table with a --NAME */
static void long_options(struct option longopts[N_OPTIONS + 1])
{
	unsigned i, k = 0;

	memset(longopts, 0, (N_OPTIONS + 1) * sizeof(*longopts));
	for (i = 0; i < N_OPTIONS; i++)
		if (option_table[i].name)
			longopts[k++] = (struct option){ option_table[i].name,
				!option_table[i].value ? no_argument :
				option_table[i].bare ? optional_argument :
				required_argument, NULL, option_table[i].id };
}

/* What each option is until it is given */
static void default_options(struct options *o)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	struct timespec now;

	memset(o, 0, sizeof(*o));
	o->queues = cpus < 1 ? 1 : cpus > MAX_QUEUES ? MAX_QUEUES : cpus;
	o->want_allow_other = AUTO;
	o->want_passthrough = AUTO;
	o->want_io_uring = OFF;	/* bench.sh: read(2) queues win on 4 KiB I/O */
	clock_gettime(CLOCK_REALTIME, &now);
	o->seed = (uint64_t)now.tv_sec * 1000000000 + now.tv_nsec + getpid();
	o->retry = 30;
	o->cache = CACHE_AUTO;
	o->want_spin = AUTO;
}

/* The command line, or mount(8)'s helper call, into o; returns PARSED,
 * PARSE_BAD with why, PARSE_PRINT with p->print, or PARSE_FAKE */
static int parse_options(struct options *o, struct parse *p, int argc,
			 char *argv[], char *why)
{
	struct option longopts[N_OPTIONS + 1];
	/* mount(8) calls helpers as SOURCE MOUNTPOINT [-sfnv] [-N NS]
	 * [-o OPTS] [-t TYPE]: -f there means "fake", the others are ours */
	bool helper = argc > 0 && mount_helper(argv[0]), fake = false;
	char what[64];
	unsigned i;
	int c;

	memset(p, 0, sizeof(*p));
	long_options(longopts);
	default_options(o);
	opterr = 0;
	optind = 0;		/* a fresh scan, even for a harness's second export */
	while ((c = getopt_long(argc, argv, helper ? ":o:sfnvN:t:" : ":wgfdq:o:hV",
				longopts, NULL)) != -1) {
		if (helper && c == 'f')
			c = 'F';
		switch (c) {
		case 'o':
			if (!parse_mount_options(o, p, optarg, why))
				return PARSE_BAD;
			continue;
		case 'F':
			fake = true;
			continue;
		case 's': case 'n': case 'v': case 'N': case 't':
			continue;	/* sloppy, no mtab, verbose, namespace, type */
		case ':':
			complain(why, "%s: needs a value", argv[optind - 1]);
			return PARSE_BAD;
		}
		for (i = 0; i < N_OPTIONS && option_table[i].id != c; i++)
			;
		if (c == '?' || i == N_OPTIONS) {
			complain(why, "%s: unknown option (see --help)", argv[optind - 1]);
			return PARSE_BAD;
		}
		given(p, &option_table[i], GIVEN_LONG);
		if (option_table[i].bare && !optarg && optind < argc &&
		    argv[optind][0] != '-') {
			p->bare_name = p->names[i];
			p->bare_next = argv[optind];
		}
		snprintf(what, sizeof(what), "--%s", option_table[i].name);
		if (!set_option(o, p, c, optarg ? optarg : option_table[i].bare,
				what, why))
			return PARSE_BAD;
		if (p->print)
			return PARSE_PRINT;
	}
	if (!check_options(o, p, argc - optind, why))
		return PARSE_BAD;
	o->helper = helper;
	o->source_path = argv[optind];
	o->mountpoint = o->list_partitions || o->commit ? NULL :
			argv[optind + 1];
	return fake ? PARSE_FAKE : PARSED;
}

/* parse_options() into e->opt, exiting where it says so: with its
 * complaint, or after printing -h's or -V's text, or at once for mount -f */
static void options_or_exit(struct export *e, int argc, char *argv[])
{
	struct parse p;
	char why[WHY_SIZE];

	switch (parse_options(&e->opt, &p, argc, argv, why)) {
	case PARSE_BAD:
		die("%s", why);
	case PARSE_PRINT:
		print_and_exit(p.print);
	case PARSE_FAKE:
		exit(0);
	}
	/* the paths in use start as given: check_mountpoint() and
	 * resolve_paths() make them absolute */
	e->source_path = e->opt.source_path;
	e->mountpoint = e->opt.mountpoint;
	e->control_path = e->opt.control_path;
	e->snapshot_file = e->opt.snapshot_file;
}

/* The option parser's entry for a fuzzer: see fuseexport.h */
int fuseexport_fuzz_options(int argc, char *argv[], char *why)
{
	struct options o;
	struct parse p;
	int r;

	r = parse_options(&o, &p, argc, argv, why);
	free_rules(o.rules);
	return r;
}

/* ===== Mounting ===== */
/*
 * Holds: a FUSE mount found in mountinfo (and its fuzzer's entry), the
 * checks on a mount(8) helper's source and on MOUNTPOINT, absolute paths,
 * the mount itself (mount(2) as root, else fusermount3) and the unmount.
 * Uses: die, mounted_export. Used by: main; unmount_export by die, detach,
 * run_command and run_export; mount_dev by lift_dirty_limit.
 */

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

/* The last (topmost) FUSE mount on path in f, a mountinfo file: true if
 * there is one, its device ("0:42") into dev (32 bytes) if asked. Lines
 * are read whole, however long (a long mount point's tail is no line). */
static bool mountinfo_dev(FILE *f, const char *path, char *dev)
{
	char *line = NULL, *mnt = NULL, *grown, type[256], id[32];
	size_t size = 0, mnt_size = 0;
	bool found = false;

	while (getline(&line, &size, f) > 0) {
		const char *dash = strstr(line, " - ");
		if (mnt_size < size) {	/* a field as long as its line */
			if (!(grown = realloc(mnt, size)))
				break;
			mnt = grown;
			mnt_size = size;
		}
		if (!dash || sscanf(line, "%*s %*s %31s %*s %s", id, mnt) != 2 ||
		    sscanf(dash + 3, "%255s", type) != 1)
			continue;
		unescape(mnt);
		if (strcmp(mnt, path) || strncmp(type, "fuse", 4))
			continue;
		found = true;
		if (dev)
			memcpy(dev, id, sizeof(id));
	}
	free(line);
	free(mnt);
	return found;
}

/* The same in /proc/self/mountinfo */
static bool mount_dev(const char *path, char *dev)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	bool found;

	if (!f)
		return false;
	found = mountinfo_dev(f, path, dev);
	fclose(f);
	return found;
}

/* The mountinfo parser's entry for a fuzzer: see fuseexport.h */
int fuseexport_fuzz_mountinfo(const char *text, size_t n, const char *path)
{
	FILE *f = n ? fmemopen((void *)text, n, "r") : NULL;
	char dev[32];
	int found;

	if (!n)
		return 0;
	if (!f)
		return -1;
	found = mountinfo_dev(f, path, dev);
	fclose(f);
	return found;
}

/* mount(8) takes offset= and sizelimit= in an fstab line or -o as its own
 * loop options: it sets up a loop device with them (autoclear) and calls
 * the helper with that instead of SOURCE, the options gone. Refuse it with
 * the names it passes on, rather than export a loop device over the file
 * (or, without root, fail to open it). Exits if so. */
static MAIN_ONLY void check_helper_source(struct export *e)
{
	static const char *const knobs[] = { "autoclear", "offset", "sizelimit" };
	char path[96], value[32];
	unsigned long long v[3] = { 0 };
	struct stat st;
	unsigned i;
	FILE *f;

	if (!e->opt.helper || stat(e->source_path, &st) < 0 ||
	    !S_ISBLK(st.st_mode) || major(st.st_rdev) != 7)	/* LOOP_MAJOR */
		return;
	for (i = 0; i < 3; i++) {
		snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/loop/%s",
			 major(st.st_rdev), minor(st.st_rdev), knobs[i]);
		if ((f = fopen(path, "re"))) {
			if (fgets(value, sizeof(value), f))
				v[i] = strtoull(value, NULL, 10);
			fclose(f);
		}
	}
	if (v[0] && (v[1] || v[2]))
		die("%s: a loop device mount(8) made of offset= or sizelimit=, "
		    "which it takes as its own: name the window window_offset= "
		    "and window_size=", e->source_path);
}

/* path as a shell word for a command to paste: as it is if nothing in
 * it is special, else in single quotes (a quote as '\''), and after
 * "./" if it starts with '-' (not an option of the command's); NULL if
 * buf of size n (8 at least) is too small */
static const char *shell_word(const char *path, char *buf, size_t n)
{
	bool plain = *path && !path[strspn(path, "abcdefghijklmnopqrstuvwxyz"
				"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+,:=@%")];
	size_t k = 0;

	if (plain && *path != '-')
		return path;
	if (*path == '-')
		buf[k++] = '.', buf[k++] = '/';
	if (!plain)
		buf[k++] = '\'';
	for (; *path && k + 5 < n; path++) {
		if (*path == '\'')
			memcpy(buf + k, "'\\''", 4), k += 4;
		else
			buf[k++] = *path;
	}
	if (*path)
		return NULL;
	if (!plain)
		buf[k++] = '\'';
	buf[k] = 0;
	return buf;
}

/* MOUNTPOINT: an existing regular file, not already carrying an export;
 * exits if it is not */
static MAIN_ONLY void check_mountpoint(struct export *e)
{
	const char *path = e->mountpoint, *word;
	char buf[PATH_MAX * 4 + 5];
	struct stat st;
	char *abs;

	word = shell_word(path, buf, sizeof(buf));
	if (stat(path, &st) < 0 && errno == ENOTCONN)
		die("%s: a dead export is mounted here (its server is gone); "
		    "clear it with: umount %s", path, word ? word : "PATH");
	if (stat(path, &st) < 0)
		die("%s:", path);
	if (!S_ISREG(st.st_mode))
		die("%s: not a regular file (an export is mounted on a file)", path);
	abs = realpath(path, NULL);
	if (!abs)
		die("%s:", path);
	if (mount_dev(abs, NULL))	/* a FUSE file system, ours or not */
		die("%s: already exported (end that export with: umount %s)",
		    path, word ? word : "PATH");
	e->mountpoint = e->mountpoint_buf = abs;
}

/* path made absolute, if it is relative: the working directory's own
 * path, "/" and path, so it names what path names here, there or not, and follows
 * no more symlinks than path would (not realpath(3): a snapshot FILE is
 * opened O_NOFOLLOW). Returns it (malloc'ed), or NULL with errno set. */
static char *absolute(const char *path)
{
	char *abs, *cwd;

	if (*path == '/')
		return strdup(path);
	if (!(cwd = getcwd(NULL, 0)))
		return NULL;
	if (asprintf(&abs, "%s%s%s", cwd, strcmp(cwd, "/") ? "/" : "", path) < 0)
		abs = NULL;
	free(cwd);
	return abs;
}

/* Every path the server goes on using once detach() has taken it to /
 * (the source's, the FIFO it removes at the end, the snapshot FILE) made
 * absolute, as the caller meant it, while the working directory is still
 * the caller's. Exits if one cannot be. */
static MAIN_ONLY void resolve_paths(struct export *e)
{
	const char **path[] = { &e->source_path, &e->control_path,
				&e->snapshot_file };
	unsigned i;

	for (i = 0; i < 3; i++) {
		if (!*path[i] || **path[i] == '/' || (i == 0 && is_nbd_uri(*path[i])))
			continue;
		if (!(e->resolved[i] = absolute(*path[i])))
			die("%s: making it an absolute path:", *path[i]);
		*path[i] = e->resolved[i];
	}
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
	/* unmounting, detached in /, needs it by a path that holds there
	 * (PATH may name it relative: ".", or an empty entry) */
	e->fusermount = absolute(prog);
	free(prog);
	if (!(prog = e->fusermount))
		die("%s:", fusermounts[0]);
	if (e->opt.want_allow_other == ON && !user_allow_other())
		die("--allow-other=on: without root it needs user_allow_other "
		    "in /etc/fuse.conf");
	e->allow_other = e->opt.want_allow_other != OFF && user_allow_other();
	if (!append_escaped(opts, sizeof(opts), e->source_path) ||
	    (n = strlen(opts), (size_t)snprintf(opts + n, sizeof(opts) - n,
			",subtype=fuseexport,default_permissions,max_read=%u%s%s%s",
			MAX_WRITE, e->allow_other ? ",allow_other" : "",
			e->opt.writable ? "" : ",ro", e->opt.sync ? ",sync" : "")
	     >= sizeof(opts) - n))
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
}

/* Run fusermount3 -u [-z] on the mount point, the one that mounted it;
 * returns its exit status */
static int fusermount_unmount(struct export *e, bool lazy)
{
	const char *prog = e->fusermount;
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
	return status;
}

/* Mount the export: with mount(2) on a new /dev/fuse fd as root, else
 * through fusermount3. Exits on failure. */
static MAIN_ONLY void mount_export(struct export *e)
{
	char opts[256];

	if (geteuid() != 0) {
		mount_by_fusermount(e);
		return;
	}
	e->fuse_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (e->fuse_fd < 0)
		die("/dev/fuse:");
	e->allow_other = e->opt.want_allow_other != OFF; /* root may always */
	snprintf(opts, sizeof(opts), "fd=%d,rootmode=%o,user_id=%u,group_id=%u,"
		 "default_permissions,max_read=%u%s", e->fuse_fd,
		 S_IFREG | e->mode, e->uid, e->gid, MAX_WRITE,
		 e->allow_other ? ",allow_other" : "");
	/* a read-only export is a read-only mount: chmod, touch: EROFS */
	if (mount(e->source_path, e->mountpoint, "fuse.fuseexport",
		  MS_NOSUID | MS_NODEV | (e->opt.writable ? 0 : MS_RDONLY) |
		  (e->opt.sync ? MS_SYNCHRONOUS : 0),
		  opts) < 0)
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

/* ===== Detaching and --run ===== */
/*
 * Holds: detach(), the fork whose parent waits on a pipe until the server
 * has the export live, and run_command(), that parent's --run. Uses:
 * unmount_export, close_control; tell_ready (Going live) writes the pipe.
 * Used by: main.
 */
/* Start --run's COMMAND in a child, its signal mask old (run_command()'s
 * before it blocked the ones it waits for). Returns its pid, or -1 after
 * saying why. */
static pid_t start_command(struct export *e, const sigset_t *old)
{
	pid_t cmd = fork();

	if (cmd < 0) {
		fprintf(stderr, "fuseexport: --run: fork: %s\n", strerror(errno));
		return -1;
	}
	if (cmd == 0) {
		/* COMMAND as a shell would start it: main() ignores SIGPIPE
		 * for itself, and an ignored signal stays ignored across exec
		 * (`cat "$1" | head` would fail with EPIPE, not end quietly) */
		signal(SIGPIPE, SIG_DFL);
		sigprocmask(SIG_SETMASK, old, NULL);
		setenv("FUSEEXPORT_FILE", e->mountpoint, 1);
		execl("/bin/sh", "sh", "-c", e->opt.run_command, "sh",
		      e->mountpoint, (char *)NULL);
		fprintf(stderr, "fuseexport: --run: /bin/sh: %s\n", strerror(errno));
		_exit(127);
	}
	return cmd;
}

/* --run: the parent, once the server (its child) has the export live,
 * runs /bin/sh -c COMMAND with the export's path as $1 and in
 * FUSEEXPORT_FILE, and passes the signals that end fuseexport on to it.
 * When COMMAND exits, the server is told to end the export (SIGTERM: a
 * final flush, the unmount) and is waited for. Returns COMMAND's status
 * (128 + the signal that killed it), or 1 if the server did not end
 * cleanly (it says why on stderr, which it keeps, or this says it died). */
static MAIN_ONLY int run_command(struct export *e, pid_t server)
{
	int status, cmd_status = -1, server_status = -1, sig;
	sigset_t set, old;
	pid_t cmd, pid;

	/* the server holds the export's /dev/fuse: should it die, COMMAND's
	 * requests must fail, not wait on a copy kept here */
	close(e->fuse_fd);
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, &old);
	cmd = start_command(e, &old);
	if (cmd < 0)
		cmd_status = 1 << 8;
	while (cmd_status < 0) {
		if (sigwait(&set, &sig) != 0)
			continue;
		if (sig != SIGCHLD) {
			kill(cmd, sig);
			continue;
		}
		while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
			if (pid == cmd)
				cmd_status = status;
			else if (pid == server)
				server_status = status;
		}
	}
	if (server_status < 0) {
		kill(server, SIGTERM);
		while (waitpid(server, &server_status, 0) < 0 && errno == EINTR)
			;
	}
	if (WIFSIGNALED(server_status)) {	/* nothing unmounted it */
		unmount_export(e, true);
		close_control(e);	/* nor removed the FIFO */
		fprintf(stderr, "fuseexport: %s: the export died under --run "
			"(its server was killed by signal %d)\n", e->mountpoint,
			WTERMSIG(server_status));
		return 1;
	}
	if (WEXITSTATUS(server_status))
		return 1;	/* the server said why: a failed flush, a halt */
	return WIFSIGNALED(cmd_status) ? 128 + WTERMSIG(cmd_status) :
	       WEXITSTATUS(cmd_status);
}

/* Go to the background: the parent returns only once the export is live
 * (the child answered INIT), or unmounts and fails if the child died */
static MAIN_ONLY void detach(struct export *e)
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
			exit(e->opt.run_command ? run_command(e, pid) : 0);
		unmount_export(e, true);
		close_control(e);
		exit(1);		/* the server said why */
	}
	close(fds[0]);
	e->ready_pending = fds[1];
	setsid();
	if (chdir("/") < 0) {
		/* stay where we are */
	}
}

/* ===== Serving until the end ===== */
/*
 * Holds: lift_dirty_limit, hear_reconnects, end_export (the flush, the
 * backing id closed, the unmount) and run_export, the main thread from
 * the first queue to the end: signals waited for, the spin budget
 * counted, the kernel's cache dropped when the source changed, then
 * end_export, the threads joined, and say_ended, a detached server's last
 * line. Uses: start_queues, count_spin_budget, control_loop,
 * close_control, export_crashed, mount_dev, source_reconnected,
 * drop_kernel_cache, flush_export, unmount_export. Used by: main.
 */

/* Dirty pages of a writeback export: the kernel holds every FUSE file
 * system to 1% of the dirty limit, strictly, lest a server it cannot
 * trust pin memory, which caps cached writes far below the source's
 * speed. Root may lift that in /sys/class/bdi, and a server root started
 * is trusted as a disk is: no strict limit, up to the whole dirty limit.
 * Elsewhere (no root, no strict_limit before Linux 6.2) it stays. */
static MAIN_ONLY void lift_dirty_limit(struct export *e)
{
	static const char *const knob[][2] = {
		{ "strict_limit", "0" }, { "max_ratio", "100" } };
	char dev[32], path[96];
	unsigned i, lifted = 0;
	int fd;

	/* before INIT: the cache asked for (auto never settles on writeback) */
	if (e->opt.cache != CACHE_WRITEBACK || !mount_dev(e->mountpoint, dev))
		return;
	for (i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "/sys/class/bdi/%s/%s", dev, knob[i][0]);
		fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd >= 0 && write(fd, knob[i][1], strlen(knob[i][1])) > 0)
			lifted++;
		if (fd >= 0)
			close(fd);
	}
	if (e->opt.debug)
		fprintf(stderr, "fuseexport: writeback: the kernel's dirty page "
			"limit for FUSE %s (/sys/class/bdi/%s)\n", lifted == 2 ?
			"lifted: no strict limit, max_ratio 100" : lifted ?
			"lifted in part" : "kept (root lifts it)", dev);
}

/* An NBD source at the bottom of the stack tells the export when it
 * made its connection again (source_reconnected) */
static MAIN_ONLY void hear_reconnects(struct export *e)
{
	struct source *bottom;

	for (bottom = e->top; bottom->below; bottom = bottom->below)
		;
	if (is_nbd_uri(e->source_path)) {
		nbd_of(bottom)->reconnected = source_reconnected;
		nbd_of(bottom)->reconnected_arg = e;
	}
}

/* Told to end (SIGTERM, SIGINT, SIGHUP): make the writes durable, let go
 * of the passthrough backing file, unmount; the queues end as the kernel
 * lets go of them */
static MAIN_ONLY void end_export(struct export *e)
{
	fault_hurry(e->faults);		/* no delay holds the end */
	if (e->opt.writable && !export_crashed(e))
		flush_export(e, false);	/* failure: run_export() tells */
	/* open files keep their own; an OPEN racing this (a queue's
	 * open_backing) gets none, never the id closed here */
	pthread_mutex_lock(&e->lock);
	if (e->backing_id > 0)
		ioctl(e->fuse_fd, FUSE_DEV_IOC_BACKING_CLOSE, &e->backing_id);
	if (e->backing_id >= 0)
		e->backing_id = -ESHUTDOWN;
	pthread_mutex_unlock(&e->lock);
	unmount_export(e, false);
}

/* A detached server's last word in its log, unless it halted: how the
 * export ended (ended_by: the signal, or 0 for an unmount), and whether
 * its writes were flushed, a crash failed them or dropped what the
 * volatile cache held (or, torn, some of it), or a flush failed (err).
 * Its "<N>" is its level, which log_line takes off. */
static MAIN_ONLY void say_ended(struct export *e, int ended_by, int err)
{
	char why[160] = ", its writes flushed";
	int crashed = export_crashed(e);

	if (e->opt.foreground || e->opt.run_command)
		return;		/* stderr is the caller's, who knows */
	if (err)
		snprintf(why, sizeof(why), ", a flush of the source failed "
			 "(%s): writes since the last good one may be lost",
			 strerror(err));
	else if (!e->opt.writable)
		*why = 0;
	else if (crashed && !e->volatile_cache)
		snprintf(why, sizeof(why), ", crashed: every read, write and "
			 "flush failed from then on");
	else if (crashed == CRASHED)
		snprintf(why, sizeof(why), ", crashed: the writes held "
			 "unflushed were dropped");
	else if (crashed == CRASHED_TORN)
		snprintf(why, sizeof(why), ", crashed torn: of the writes held "
			 "unflushed some were written, the rest dropped");
	/* at its level in the log: an error, a warning, or a notice */
	fprintf(stderr, "<%d>fuseexport: %s: the export of %s ended (%s)%s\n",
		err ? LOG_ERR : crashed ? LOG_WARNING : LOG_NOTICE,
		e->mountpoint, e->source_path, ended_by == SIGTERM ? "SIGTERM" :
		ended_by == SIGINT ? "SIGINT" : ended_by ? "SIGHUP" : "unmounted",
		why);
}

/* Serve until the export ends; returns the exit status: 1 if it halted
 * or a flush of the source failed */
static MAIN_ONLY int run_export(struct export *e)
{
	struct timespec tick = { 0, SPIN_SAMPLE_NS };
	sigset_t set;
	bool unmounted = false;
	unsigned i;
	int sig, res, ended_by = 0;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGIO, SIG_IGN);		/* a lease broken (file_stamp) */
	if (e->control_path &&
	    (errno = pthread_create(&e->control_thread, NULL, control_loop, e)))
		die("--control: starting its thread:");
	e->control_running = e->control_path != NULL;
	lift_dirty_limit(e);
	hear_reconnects(e);
	start_queues(e);
	while (atomic_load(&e->running) > 0) {
		sig = sigtimedwait(&set, NULL,
				   e->opt.want_spin != OFF ? &tick : NULL);
		if (sig < 0 && errno == EAGAIN)
			count_spin_budget(e);
		if (sig < 0)
			continue;
		if (atomic_exchange(&e->stale, false))
			drop_kernel_cache(e);
		if (atomic_load(&e->halted)) {
			/* Queues may sleep in read(2) for good (without root
			 * a lazy unmount aborts nothing): exiting closes every
			 * /dev/fuse fd, which aborts the connection, so no
			 * client is left waiting on us; nor does a delay
			 * hold the exit */
			fault_hurry(e->faults);
			unmount_export(e, true);
			if (e->opt.writable && !export_crashed(e))
				flush_export(e, false);
			close_control(e);
			exit(1);
		} else if (sig != SIGUSR1 && !unmounted) {
			end_export(e);
			unmounted = true;
			ended_by = sig;
		}
	}
	/* unmounted: no delay holds the final flush */
	fault_hurry(e->faults);
	for (i = 0; i < e->nqueues; i++)
		pthread_join(e->queue[i].thread, NULL);
	for (i = 0; e->rings && i < e->nrings; i++)
		if (e->rings[i].thread)
			pthread_join(e->rings[i].thread, NULL);
	/* after a crash what was held is gone: nothing to flush */
	if (e->opt.writable && !export_crashed(e) &&
	    (res = flush_export(e, false)) < 0) {
		if (atomic_load(&e->flush_error))	/* the first one's why */
			res = -atomic_load(&e->flush_error);
		fprintf(stderr, "fuseexport: %s: a flush of the source failed "
			"(%s): writes since the last good one may be lost\n",
			e->source_path, strerror(-res));
		say_ended(e, ended_by, -res);
		return 1;
	}
	if (atomic_load(&e->halted))
		return 1;
	say_ended(e, ended_by, 0);
	return 0;
}

/* ===== The test harness's entry points ===== */
/*
 * Holds: fuseexport_new, fuseexport_request and fuseexport_free, which
 * drive serve() without /dev/fuse (see fuseexport.h); the fuzzers' entries
 * stay in the sections they drive. Uses: options_or_exit, open_source,
 * the dispatcher. Used by: tests/ (built with -DFUSEEXPORT_NO_MAIN);
 * fuseexport_free by main too.
 */
struct export *fuseexport_new(int argc, char *argv[])
{
	struct export *e = calloc(1, sizeof(*e));

	if (!e)
		die("out of memory:");
	options_or_exit(e, argc, argv);
	open_source(e);
	e->nqueues = 1;
	e->queue = calloc(1, sizeof(*e->queue));
	if (!e->queue || !(e->queue->req.data = request_buffer()))
		die("out of memory:");
	e->queue->e = e;
	e->queue->fd = -1;
	e->quiet = true;
	e->allow_other = e->opt.want_allow_other != OFF;
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

	e->top->close(e->top);		/* the fault layer frees the rules */
	for (i = 0; e->queue && i < e->nqueues; i++)
		free(e->queue[i].req.data);
	free(e->queue);
	free(e->mountpoint_buf);
	for (i = 0; i < 3; i++)
		free(e->resolved[i]);
	free(e->fusermount);
	free(e);
}

/* ===== main() ===== */
/*
 * The life cycle, in order: parse; the one-shot modes (--partitions,
 * --commit); the checks; paths made absolute; the source opened; the FIFO
 * made; the mount; --log's FILE opened; detach; serve; the end.
 *
 * Holds: main(), left out of a test harness's build (FUSEEXPORT_NO_MAIN).
 * Uses: options_or_exit, list_partitions, commit_snapshot,
 * check_helper_source, check_mountpoint, resolve_paths, open_source,
 * open_control, mount_export, log_fd, detach, run_export, close_control,
 * fuseexport_free, die. Used by: nothing: the program's entry.
 */
#ifndef FUSEEXPORT_NO_MAIN
int main(int argc, char *argv[])
{
	struct export *e = calloc(1, sizeof(*e));
	int status;

	if (!e)
		die("out of memory:");
	signal(SIGPIPE, SIG_IGN);	/* a closed stderr or parent: EPIPE */
	options_or_exit(e, argc, argv);
	if (e->opt.list_partitions)
		list_partitions(e);
	if (e->opt.commit)
		commit_snapshot(e);
	check_helper_source(e);
	check_mountpoint(e);
	resolve_paths(e);
	open_source(e);
	open_control(e);
	mount_export(e);
	if (e->opt.log_path && !e->opt.foreground && !e->opt.run_command &&
	    (log_fd = open(e->opt.log_path, O_WRONLY | O_CREAT | O_APPEND |
			   O_CLOEXEC, 0600)) < 0)
		die("--log=%s:", e->opt.log_path);
	if (!e->opt.foreground || e->opt.run_command)
		detach(e);
	status = run_export(e);
	close_control(e);
	fuseexport_free(e);
	return status;
}
#endif
