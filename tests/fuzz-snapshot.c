/* fuzz-snapshot.c - hostile snapshot FILEs against fuseexport's resume
 *
 * Drives fuseexport_fuzz_snapshot() (the real open and resume code of
 * --snapshot=FILE, built with -DFUSEEXPORT_NO_MAIN) with FILEs the fuzzer
 * writes, over a scratch source of SOURCE_SIZE bytes: no crash, no
 * sanitizer report, a refusal is one line, and the source never changes.
 *
 * An input is a mode byte, then FILE's first bytes. Mode bit 0 pads FILE
 * (sparse) to the length a FILE for the scratch source has, so that the
 * map is reached without inputs of a megabyte; bit 1 stamps the scratch
 * source's device and inode into the header, which a FILE made for
 * another file (every seed) names instead. The seeds are real FILEs:
 * tests/fuzz-snapshot.seed DIR writes them.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <endian.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../fuseexport.h"

enum {
	SOURCE_SIZE = 262144 + 1000,	/* as tests/fuzz-snapshot.seed */
	BLOCKS = (SOURCE_SIZE + 4095) / 4096,
	FULL = 4096 + (BLOCKS + 32767) / 32768 * 4096 + BLOCKS * 4096,
};

static char source[80], file[80];
static struct stat source_st;
static unsigned char *original;

static void fail(const char *what)
{
	fprintf(stderr, "fuzz-snapshot: %s\n", what);
	abort();
}

/* The scratch source and a name for FILE, once: in memory where there is
 * /dev/shm, as FILE's fsyncs are many */
static void setup(void)
{
	char dir[64];
	size_t i;
	int fd;

	snprintf(dir, sizeof(dir), "%s/fuseexport-fuzz-snapshot.XXXXXX",
		 access("/dev/shm", W_OK) ? "/tmp" : "/dev/shm");
	if (!mkdtemp(dir))
		fail("mkdtemp");
	snprintf(source, sizeof(source), "%s/source", dir);
	snprintf(file, sizeof(file), "%s/file", dir);
	original = malloc(SOURCE_SIZE);
	if (!original)
		fail("out of memory");
	for (i = 0; i < SOURCE_SIZE; i++)
		original[i] = (unsigned char)(i * 2654435761u >> 13);
	fd = open(source, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, original, SOURCE_SIZE) != SOURCE_SIZE ||
	    fstat(fd, &source_st) < 0)
		fail("making the scratch source");
	close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	unsigned char mode = size ? data[0] : 0, *back;
	char why[4200];
	uint64_t id[2];
	int fd, taken;

	if (!*source)
		setup();
	data += size != 0;
	size -= size != 0;
	fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size))
		fail("writing FILE");
	if ((mode & 1) && size < FULL && ftruncate(fd, FULL) < 0)
		fail("padding FILE");
	id[0] = htole64(source_st.st_dev);
	id[1] = htole64(source_st.st_ino);
	if ((mode & 2) && size >= 32 && pwrite(fd, id, sizeof(id), 16) != sizeof(id))
		fail("stamping FILE");
	close(fd);
	why[0] = 0;
	taken = fuseexport_fuzz_snapshot(file, source, why, sizeof(why));
	if (!taken && (!*why || strchr(why, '\n')))
		fail("a refusal that is not one line");
	back = malloc(SOURCE_SIZE);
	fd = open(source, O_RDONLY);
	if (!back || fd < 0 || read(fd, back, SOURCE_SIZE) != SOURCE_SIZE ||
	    memcmp(back, original, SOURCE_SIZE))
		fail("the source changed");
	close(fd);
	free(back);
	unlink(file);
	return 0;
}
