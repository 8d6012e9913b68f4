/* fuzz-requests.c - hostile requests against fuseexport's request handler
 *
 * Drives the transport-independent handler declared in fuseexport.h with
 * arbitrary bytes, as /dev/fuse would deliver them, on a scratch source:
 * no crash, no sanitizer report, every reply well framed, and never a byte
 * written outside the export's window. An input is a series of requests,
 * each a 2-byte little-endian length and that many bytes; its first byte
 * picks how the source is exported (a window, growable, read-only,
 * writable), and a valid INIT always goes first.
 *
 * A first byte of 4 to 7 (mod 8) picks the NBD source's reply parser
 * instead: the rest of the input is what a hostile server sends to a
 * connection with requests in flight (see fuseexport_nbd_replies), with
 * structured replies negotiated if the first byte is odd.
 *
 * The seeds (a valid request of every opcode the handler serves, with
 * truncated, oversized and overflowing variants, and NBD reply streams)
 * are C structs, so LLVMFuzzerInitialize writes them into the directory
 * FUZZ_CORPUS names. Built and run by `make fuzz` (tests/fuzz.sh), as a
 * libFuzzer target or with the plain driver tests/fuzz-main.c.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../fuseexport.h"

enum {
	SOURCE_SIZE = 256 * 1024,
	WINDOW_OFFSET = 64 * 1024,	/* the window: 64 KiB + 128 KiB */
	WINDOW_SIZE = 128 * 1024,
	REPLY_SIZE = (1 << 20) + 4096,
};

static char source[64], nbd_stream[64];
static unsigned char original[SOURCE_SIZE];
static unsigned char *reply, *scratch;

static void fail(const char *what)
{
	fprintf(stderr, "fuzz: %s\n", what);
	abort();
}

/* Make the scratch source and its original contents, once */
static void setup(void)
{
	char dir[] = "/tmp/fuseexport-fuzz.XXXXXX";
	unsigned i;

	if (!mkdtemp(dir))
		fail("mkdtemp");
	/* a growable source must not fill the disk: a fallocate of the
	 * whole range a request names would (EFBIG instead of SIGXFSZ) */
	signal(SIGXFSZ, SIG_IGN);
	if (setrlimit(RLIMIT_FSIZE, &(struct rlimit){ 64 << 20, 64 << 20 }) < 0)
		fail("setrlimit");
	snprintf(source, sizeof(source), "%s/src", dir);
	snprintf(nbd_stream, sizeof(nbd_stream), "%s/nbd", dir);
	for (i = 0; i < SOURCE_SIZE; i++)
		original[i] = i % 251 + (i >> 12);
	reply = malloc(REPLY_SIZE);
	scratch = malloc(SOURCE_SIZE);
	if (!reply || !scratch)
		fail("malloc");
}

static void reset_source(void)
{
	int fd = open(source, O_RDWR | O_CREAT | O_TRUNC, 0600);

	if (fd < 0 || pwrite(fd, original, SOURCE_SIZE, 0) != SOURCE_SIZE)
		fail("writing the source");
	close(fd);
}

/* Fail unless every byte outside [lo, hi) of the source is as it was */
static void check_outside(size_t lo, size_t hi)
{
	int fd = open(source, O_RDONLY);
	struct stat st;

	if (fd < 0 || fstat(fd, &st) < 0)
		fail("reopening the source");
	if (st.st_size != SOURCE_SIZE)
		fail("a window's source changed size");
	if (pread(fd, scratch, SOURCE_SIZE, 0) != SOURCE_SIZE)
		fail("reading the source back");
	close(fd);
	if (memcmp(scratch, original, lo) ||
	    memcmp(scratch + hi, original + hi, SOURCE_SIZE - hi))
		fail("a byte outside the window changed");
}

static long request(struct export *e, const void *req, size_t len)
{
	const struct fuse_in_header *in = req;
	const struct fuse_out_header *out = (const void *)reply;
	long r = fuseexport_request(e, req, len, reply, REPLY_SIZE);

	if (r > 0) {
		if (r < (long)sizeof(*out) || out->len != r)
			fail("a reply's length is not its header's");
		if (out->unique != in->unique)
			fail("a reply to another request");
		if (out->error > 0 || out->error < -4095 ||
		    (out->error && r != sizeof(*out)))
			fail("a bad error reply");
	}
	return r;
}

/* The bytes of an NBD server's replies, through the reply parser: no
 * crash, no sanitizer report, never more answers than requests */
static void nbd_replies(const unsigned char *data, size_t size, int structured)
{
	int fd = open(nbd_stream, O_RDWR | O_CREAT | O_TRUNC, 0600);

	if (fd < 0 || write(fd, data, size) != (ssize_t)size ||
	    lseek(fd, 0, SEEK_SET) != 0)
		fail("writing the NBD stream");
	if (fuseexport_nbd_replies(fd, structured) > 5)
		fail("more requests answered than were in flight");
	close(fd);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	static const char *const modes[][3] = {
		{ "-w", "--offset=64K", "--size=128K" },
		{ "-g", "-q1", "-q1" },
		{ "-q1", "-q1", "-q1" },
		{ "-w", "-q1", "-q1" },
	};
	struct {
		struct fuse_in_header in;
		struct fuse_init_in init;
	} init = {
		{ sizeof(init), FUSE_INIT, 1, 0, 0, 0, 0, 0, 0 },
		{ FUSE_KERNEL_VERSION, FUSE_KERNEL_MINOR_VERSION, 131072,
		  0xffffffff, 0xffffffff, { 0 } },
	};
	unsigned mode = size ? data[0] % 4 : 0;
	char *argv[] = { "fuseexport", (char *)modes[mode][0],
			 (char *)modes[mode][1], (char *)modes[mode][2],
			 source, "/nonexistent", NULL };
	struct export *e;
	size_t pos = 1;

	if (!*source)
		setup();
	if (size && data[0] % 8 >= 4) {
		nbd_replies(data + 1, size - 1, data[0] & 1);
		return 0;
	}
	reset_source();
	e = fuseexport_new(6, argv);
	if (request(e, &init, sizeof(init)) <= 0)
		fail("INIT refused");
	while (pos + 2 <= size) {
		size_t len = data[pos] | data[pos + 1] << 8;

		pos += 2;
		if (len > size - pos)
			len = size - pos;
		memcpy(scratch, data + pos, len);
		pos += len;
		if (request(e, scratch, len) < 0)
			break;		/* halted: the stream is not to be trusted */
	}
	fuseexport_free(e);
	if (mode == 0)
		check_outside(WINDOW_OFFSET, WINDOW_OFFSET + WINDOW_SIZE);
	if (mode == 2)
		check_outside(0, 0);	/* read-only: nothing at all */
	return 0;
}

/* The seed corpus: a valid request of every opcode the handler serves,
 * and truncated, oversized and overflowing variants of each */
static size_t add(unsigned char *buf, size_t n, uint32_t opcode,
		  const void *op, size_t oplen, size_t payload, int variant)
{
	struct fuse_in_header in = { 0 };
	size_t len = sizeof(in) + oplen + payload;
	unsigned char *p = buf + n + 2;

	in.len = len;
	in.opcode = opcode;
	in.unique = 2 + n;
	in.nodeid = FUSE_ROOT_ID;
	if (variant == 1)
		len = sizeof(in) + oplen / 2;		/* truncated op struct */
	if (variant == 2)
		in.len += 4096;				/* says more than came */
	memcpy(p, &in, sizeof(in));
	if (oplen)
		memcpy(p + sizeof(in), op, oplen);
	memset(p + sizeof(in) + oplen, 0xa5, payload);
	if (variant == 3 && len >= 4)
		len -= 3;				/* short of its payload */
	buf[n] = len & 0xff;
	buf[n + 1] = len >> 8;
	return n + 2 + len;
}

/* Big-endian fields of NBD replies, appended at p; each returns the end */
static unsigned char *be(unsigned char *p, uint64_t v, int bytes)
{
	while (bytes--)
		*p++ = v >> (8 * bytes);
	return p;
}

static unsigned char *simple_reply(unsigned char *p, uint32_t error, uint64_t cookie)
{
	return be(be(be(p, NBD_SIMPLE_REPLY_MAGIC, 4), error, 4), cookie, 8);
}

static unsigned char *chunk(unsigned char *p, uint16_t flags, uint16_t type,
			    uint64_t cookie, uint32_t length)
{
	p = be(be(p, NBD_STRUCTURED_REPLY_MAGIC, 4), flags, 2);
	return be(be(be(p, type, 2), cookie, 8), length, 4);
}

/* NBD reply streams: simple replies to every request in flight, then
 * structured chunks of every type, each seed with one field made wrong */
static size_t nbd_seed(unsigned char *buf, int variant)
{
	unsigned char *p = buf + 1;
	int i;

	buf[0] = variant % 2 ? 5 : 4;
	if (variant % 2 == 0) {
		p = simple_reply(p, 0, variant == 2 ? 9 : 1);
		memset(p, 0x5a, 65536), p += 65536;
		p = simple_reply(p, 0, 2);
		*p++ = 7;
		p = simple_reply(p, 5, 3);
		p = simple_reply(p, 0, 4);
		p = simple_reply(p, variant == 4 ? 0 : 22, 5);
		return p - buf;
	}
	/* cookie 1: data, a hole, more data, NONE; 2: one byte, done */
	p = chunk(p, 0, NBD_REPLY_TYPE_OFFSET_DATA, 1, 8 + 4096);
	p = be(p, variant == 3 ? 4095 : 4096, 8);
	memset(p, 0xa5, 4096), p += 4096;
	p = chunk(p, 0, NBD_REPLY_TYPE_OFFSET_HOLE, 1, 12);
	p = be(be(p, 8192, 8), variant == 5 ? 65536 : 32768, 4);
	p = chunk(p, 0, NBD_REPLY_TYPE_OFFSET_DATA, 1, 8 + 28672);
	p = be(p, 40960, 8);
	memset(p, 0x3c, 28672), p += 28672;
	p = chunk(p, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, 1, 0);
	p = chunk(p, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, 2, 9);
	p = be(p, 0, 8);
	*p++ = 1;
	/* cookie 3: an error with a message; 4: a simple reply */
	p = chunk(p, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR_BIT | 1, 3, 6 + 5);
	p = be(be(p, NBD_EIO, 4), variant == 7 ? 50 : 5, 2);
	memcpy(p, "oops!", 5), p += 5;
	p = simple_reply(p, 0, 4);
	/* cookie 5: base:allocation (context 1), data then a hole */
	p = chunk(p, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, 5, 4 + 4 * 8);
	p = be(p, variant == 9 ? 2 : 1, 4);
	for (i = 0; i < 4; i++)
		p = be(be(p, 4096, 4), i == 2 ? NBD_STATE_HOLE : 0, 4);
	return p - buf;
}

static void write_file(const char *dir, int index, const void *data, size_t len)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/seed-%03d", dir, index);
	f = fopen(path, "w");
	if (!f || fwrite(data, 1, len, f) != len || fclose(f))
		fail("writing the corpus");
}

/* Write seed number count into dir and free it; returns the next number */
static int keep_seed(const char *dir, int count, unsigned char *buf, size_t n)
{
	write_file(dir, count, buf, n);
	free(buf);
	return count + 1;
}

static void make_seeds(const char *dir)
{
	const uint64_t big = UINT64_MAX - 100;
	struct fuse_setattr_in sa = { .valid = FATTR_SIZE | FATTR_MODE | FATTR_ATIME |
				      FATTR_MTIME_NOW, .size = 100000, .mode = 0100600 };
	struct fuse_open_in op = { .flags = O_RDWR | O_TRUNC };
	struct fuse_read_in rd = { .offset = 60000, .size = 131072 };
	struct fuse_read_in rd_big = { .offset = big, .size = 4096 };
	struct fuse_write_in wr = { .offset = 120000, .size = 20000 };
	struct fuse_write_in wr_big = { .offset = big, .size = 512 };
	struct fuse_fallocate_in fa[] = {
		{ .offset = 1000, .length = 300000, .mode = 0x03 },
		{ .offset = 100, .length = 200000, .mode = 0x10 },
		{ .offset = 0, .length = 400000, .mode = 0x00 },
		{ .offset = 5000, .length = 9000, .mode = 0x01 },
		{ .offset = big, .length = 1000, .mode = 0x11 },
		{ .offset = 0, .length = 4096, .mode = 0x08 },
	};
	struct fuse_lseek_in ls[] = { { .offset = 0, .whence = 3 },
				      { .offset = 4096, .whence = 4 },
				      { .offset = big, .whence = 3 } };
	struct fuse_fsync_in fs = { .fsync_flags = 1 };
	struct fuse_release_in rl = { 0 };
	struct fuse_flush_in fl = { 0 };
	struct fuse_getattr_in ga = { 0 };
	struct fuse_forget_in fg = { 1 };
	struct fuse_batch_forget_in bf = { 1000000, 0 };
	struct fuse_interrupt_in it = { 7 };
	struct fuse_init_in init2 = { 7, 45, 0, 0, 0, { 0 } };
	struct { uint32_t opcode; const void *op; size_t len, payload; } reqs[] = {
		{ FUSE_LOOKUP, "name", 5, 0 }, { FUSE_GETATTR, &ga, sizeof(ga), 0 },
		{ FUSE_SETATTR, &sa, sizeof(sa), 0 }, { FUSE_OPEN, &op, sizeof(op), 0 },
		{ FUSE_READ, &rd, sizeof(rd), 0 }, { FUSE_READ, &rd_big, sizeof(rd_big), 0 },
		{ FUSE_WRITE, &wr, sizeof(wr), 20000 },
		{ FUSE_WRITE, &wr_big, sizeof(wr_big), 512 },
		{ FUSE_STATFS, NULL, 0, 0 }, { FUSE_RELEASE, &rl, sizeof(rl), 0 },
		{ FUSE_FSYNC, &fs, sizeof(fs), 0 }, { FUSE_FLUSH, &fl, sizeof(fl), 0 },
		{ FUSE_FALLOCATE, &fa[0], sizeof(fa[0]), 0 },
		{ FUSE_FALLOCATE, &fa[1], sizeof(fa[1]), 0 },
		{ FUSE_FALLOCATE, &fa[2], sizeof(fa[2]), 0 },
		{ FUSE_FALLOCATE, &fa[3], sizeof(fa[3]), 0 },
		{ FUSE_FALLOCATE, &fa[4], sizeof(fa[4]), 0 },
		{ FUSE_FALLOCATE, &fa[5], sizeof(fa[5]), 0 },
		{ FUSE_LSEEK, &ls[0], sizeof(ls[0]), 0 }, { FUSE_LSEEK, &ls[1], sizeof(ls[1]), 0 },
		{ FUSE_LSEEK, &ls[2], sizeof(ls[2]), 0 },
		{ FUSE_FORGET, &fg, sizeof(fg), 0 }, { FUSE_BATCH_FORGET, &bf, sizeof(bf), 0 },
		{ FUSE_INTERRUPT, &it, sizeof(it), 0 }, { FUSE_DESTROY, NULL, 0, 0 },
		{ FUSE_INIT, &init2, sizeof(init2), 0 }, { FUSE_MKDIR, "x", 2, 0 },
		{ FUSE_COPY_FILE_RANGE_64, NULL, 0, 0 }, { 4096, NULL, 0, 0 },
		{ 0xffffffff, NULL, 0, 0 },
	};
	int count = 0;
	size_t i, n;
	int variant, mode;

	for (i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
		for (variant = 0; variant < 4; variant++) {
			for (mode = 0; mode < 4; mode++) {
				unsigned char *buf = malloc(65536);
				if (!buf)
					fail("malloc");
				buf[0] = mode;
				n = add(buf, 1, reqs[i].opcode, reqs[i].op,
					reqs[i].len, reqs[i].payload, variant);
				/* and a read of the whole file after it */
				n = add(buf, n, FUSE_READ, &rd, sizeof(rd), 0, 0);
				count = keep_seed(dir, count, buf, n);
			}
		}
	}
	for (variant = 0; variant < 10; variant++) {
		unsigned char *buf = malloc(80000);
		if (!buf)
			fail("malloc");
		n = nbd_seed(buf, variant);
		count = keep_seed(dir, count, buf, n);
	}
}

/* Called by libFuzzer and tests/fuzz-main.c before the corpus is read:
 * the seeds are C structs, so the harness writes them itself, into the
 * corpus directory tests/fuzz.sh names in FUZZ_CORPUS */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *dir = getenv("FUZZ_CORPUS");

	(void)argc, (void)argv;
	if (dir)
		make_seeds(dir);
	return 0;
}
