/* fuzz-nbd.c - hostile NBD servers against fuseexport's NBD client
 *
 * The first byte of an input picks what the rest is (mod 3):
 *   0  what a server sends from the start of a connection: the greeting,
 *      the replies to the options fuseexport sends (structured replies,
 *      base:allocation, GO with NBD_REP_INFO, errors), through the real
 *      handshake (fuseexport_fuzz_nbd_handshake) on a socket pair
 *   1  what a server sends once the handshake is done, with structured
 *      replies on, to a connection with requests in flight: the real
 *      reply parser (fuseexport_nbd_replies, see fuseexport.h)
 *   2  the same with simple replies only
 * No crash, no sanitizer report, no hang; a handshake that succeeds agrees
 * block sizes the rest of the client can use; never more answers than
 * requests. tests/fuzz-nbd.seed writes seeds captured from qemu-nbd and
 * nbdkit. Build and run (see tests/fuzz-nbd.seed):
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *       -DFUSEEXPORT_NO_MAIN -o /tmp/fz tests/fuzz-nbd.c fuseexport.c -pthread
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../fuseexport.h"

enum { MAX_STREAM = 128 << 10 };	/* what one socket buffer holds */

static void fail(const char *what)
{
	fprintf(stderr, "fuzz-nbd: %s\n", what);
	abort();
}

/* The server's bytes, then its end of the stream, through the handshake */
static void handshake(const uint8_t *data, size_t size)
{
	int sv[2], buf = MAX_STREAM * 2;
	uint32_t min_block, max_payload;
	ssize_t w;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		fail("socketpair");
	setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
	fcntl(sv[1], F_SETFL, O_NONBLOCK);
	size = size > MAX_STREAM ? MAX_STREAM : size;
	while (size && (w = write(sv[1], data, size)) > 0) {
		data += w;
		size -= w;
	}
	shutdown(sv[1], SHUT_WR);	/* then the stream ends */
	if (fuseexport_fuzz_nbd_handshake(sv[0], &min_block, &max_payload) == 0 &&
	    (!min_block || (min_block & (min_block - 1)) || min_block > 65536 ||
	     max_payload < min_block))
		fail("a handshake agreed block sizes the client cannot use");
	close(sv[0]);
	close(sv[1]);
}

/* The server's replies, from a file, through the reply parser */
static void replies(const uint8_t *data, size_t size, int structured)
{
	char path[] = "/tmp/fuzz-nbd.XXXXXX";
	int fd = mkstemp(path);

	if (fd < 0 || write(fd, data, size) != (ssize_t)size ||
	    lseek(fd, 0, SEEK_SET) != 0)
		fail("writing the reply stream");
	unlink(path);
	if (fuseexport_nbd_replies(fd, structured) > 5)
		fail("more requests answered than were in flight");
	close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!size)
		return 0;
	switch (data[0] % 3) {
	case 0:
		handshake(data + 1, size - 1);
		break;
	default:
		replies(data + 1, size - 1, data[0] % 3 == 1);
	}
	return 0;
}
