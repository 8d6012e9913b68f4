/* fuzz-partitions.c - hostile partition tables against fuseexport's MBR
 * and GPT code
 *
 * Hands a disk made of the input to fuseexport_fuzz_partitions(), which
 * runs the code --partitions and --partition run: no crash, no sanitizer
 * report, what --partitions prints is UTF-8 and one line per partition,
 * and --partition finds what --partitions listed.
 *
 * An input describes a sparse disk, so that a small input stands for a
 * large one with tables at both ends:
 *
 *   byte 0       flags: bit 0, 4096-byte logical sectors (else 512);
 *                bit 1, the GPT CRCs are made right (header and entries,
 *                primary and backup) before the tables are read, so that
 *                the fuzzer reaches what lies past them; bit 2, the
 *                last chunk is a bad spot instead: a read that touches
 *                its bytes (one at least) fails with EIO
 *   bytes 1-4    the disk's size in 512-byte units, little endian
 *   then chunks  a 4-byte offset in 512-byte units and a 2-byte length,
 *                little endian, then that many bytes of the disk (cut
 *                short at the input's end); a later chunk wins
 *
 * Everything else reads as zeros. tests/fuzz-partitions.seed writes seeds
 * in this form from tables that sfdisk and sgdisk made. With
 * FUZZ_PARTITIONS_SHOW set, what each input printed goes to stderr.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../fuseexport.h"

struct chunk {
	uint64_t pos;
	size_t len;
	unsigned char *bytes;		/* in the input's copy */
};

static struct chunk *chunks;
static size_t nchunks;
static uint64_t disk_size, bad_pos, bad_len;

static uint32_t le32(const unsigned char *p)
{
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const unsigned char *p)
{
	return le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* The disk's bytes: n at pos into buf, the number read */
static ssize_t disk_read(void *buf, size_t n, uint64_t pos)
{
	size_t i;

	if (pos >= disk_size)
		return 0;
	if (n > disk_size - pos)
		n = disk_size - pos;
	if (bad_len && pos < bad_pos + bad_len && bad_pos < pos + n)
		return -EIO;
	memset(buf, 0, n);
	for (i = 0; i < nchunks; i++) {
		const struct chunk *c = &chunks[i];
		uint64_t from = c->pos > pos ? c->pos : pos;
		uint64_t to = c->pos + c->len < pos + n ? c->pos + c->len : pos + n;

		if (from < to)
			memcpy((char *)buf + (from - pos), c->bytes + (from - c->pos),
			       to - from);
	}
	return n;
}

/* Put n bytes of buf at pos wherever a chunk holds them */
static void disk_write(const void *buf, size_t n, uint64_t pos)
{
	size_t i;

	for (i = 0; i < nchunks; i++) {
		const struct chunk *c = &chunks[i];
		uint64_t from = c->pos > pos ? c->pos : pos;
		uint64_t to = c->pos + c->len < pos + n ? c->pos + c->len : pos + n;

		if (from < to)
			memcpy(c->bytes + (from - c->pos), (const char *)buf + (from - pos),
			       to - from);
	}
}

/* Make the CRCs of a GPT header at lba, and of the entries it names, right */
static void fix_gpt(unsigned sector, uint64_t lba)
{
	static unsigned char h[4096], slice[4096];
	uint64_t entries, size, done;
	uint32_t crc = 0, hsize;

	if (lba > disk_size / sector || disk_read(h, sector, lba * sector) < 92 ||
	    memcmp(h, "EFI PART", 8))
		return;
	hsize = le32(h + 12);
	if (hsize < 92 || hsize > sector)
		hsize = 92;
	entries = le64(h + 72);
	size = (uint64_t)le32(h + 80) * le32(h + 84);
	if (size <= 4 << 20 && entries < disk_size / sector) {
		for (done = 0; done < size; done += sizeof(slice)) {
			size_t n = size - done < sizeof(slice) ? size - done : sizeof(slice);

			memset(slice, 0, n);
			disk_read(slice, n, entries * sector + done);
			crc = fuseexport_crc32(crc, slice, n);
		}
		h[88] = crc, h[89] = crc >> 8, h[90] = crc >> 16, h[91] = crc >> 24;
	}
	memset(h + 16, 0, 4);
	crc = fuseexport_crc32(0, h, hsize);
	h[16] = crc, h[17] = crc >> 8, h[18] = crc >> 16, h[19] = crc >> 24;
	disk_write(h, hsize, lba * sector);
}

/* Whether the n bytes at p are UTF-8 (no overlong forms, no surrogates) */
static int is_utf8(const unsigned char *p, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned c = p[i], len, k, cp;

		if (c < 0x80) {
			i++;
			continue;
		}
		len = c >= 0xf0 && c < 0xf5 ? 4 : c >= 0xe0 && c < 0xf0 ? 3 :
		      c >= 0xc2 && c < 0xe0 ? 2 : 0;
		if (!len || i + len > n)
			return 0;
		cp = c & (0x7f >> len);
		for (k = 1; k < len; k++) {
			if ((p[i + k] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (p[i + k] & 0x3f);
		}
		if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp < 0xe000))) ||
		    (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
			return 0;
		i += len;
	}
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	unsigned char *copy;
	unsigned sector;
	char *out = NULL;
	size_t out_len = 0, i, lines = 0;
	FILE *f;
	int r;

	if (size < 5)
		return 0;
	sector = data[0] & 1 ? 4096 : 512;
	disk_size = (uint64_t)le32(data + 1) * 512;
	copy = malloc(size);
	chunks = malloc((size / 6 + 1) * sizeof(*chunks));
	if (!copy || !chunks)
		abort();
	memcpy(copy, data, size);
	nchunks = 0;
	for (i = 5; i + 6 <= size; ) {
		struct chunk *c = &chunks[nchunks++];

		c->pos = (uint64_t)le32(copy + i) * 512;
		c->len = copy[i + 4] | copy[i + 5] << 8;
		i += 6;
		if (c->len > size - i)
			c->len = size - i;
		c->bytes = copy + i;
		i += c->len;
	}
	if (data[0] & 2 && disk_size / sector >= 3) {
		fix_gpt(sector, 1);
		fix_gpt(sector, disk_size / sector - 1);
	}
	bad_pos = bad_len = 0;
	if (data[0] & 4 && nchunks) {
		nchunks--;
		bad_pos = chunks[nchunks].pos;
		bad_len = chunks[nchunks].len ? chunks[nchunks].len : 1;
	}
	f = open_memstream(&out, &out_len);
	if (!f)
		abort();
	r = fuseexport_fuzz_partitions(disk_size, sector, disk_read, f);
	if (fclose(f))
		abort();
	if (r == -EPROTO) {
		fprintf(stderr, "fuzz-partitions: --partition did not find what "
			"--partitions listed\n");
		abort();
	}
	if (!is_utf8((unsigned char *)out, out_len)) {
		fprintf(stderr, "fuzz-partitions: not UTF-8: %s\n", out);
		abort();
	}
	if (getenv("FUZZ_PARTITIONS_SHOW"))	/* to see what a seed holds */
		fprintf(stderr, "%d: %s", r, out);
	for (i = 0; i < out_len; i++)
		lines += out[i] == '\n';
	if (r >= 0 && lines != (size_t)r + 2) {
		fprintf(stderr, "fuzz-partitions: %zu lines for %d partitions: %s\n",
			lines, r, out);
		abort();
	}
	free(out);
	free(copy);
	free(chunks);
	return 0;
}
