/* fuzz-text.c - hostile text against fuseexport's parsers of text
 *
 * The first byte of an input picks the parser (mod 6), the rest is what it
 * parses, always through the real code in fuseexport.c:
 *
 *   0  control FIFO lines: the line reader with its length limit and the
 *      line handler, on a scratch export with a fault layer and a volatile
 *      cache (so crash and crash torn run too); the second byte is the
 *      size of the pieces read(2) would return (0: all at once)
 *   1  a fault rule (--fault=RULE, `fault RULE` on the FIFO)
 *   2  an NBD URI, %-escapes and all
 *   3  a command line: the rest split at NUL bytes into argv
 *   4  mount(8)'s helper call: the same, argv[0] mount.fuseexport
 *   5  mountinfo lines, searched for a FUSE mount on /mnt/x
 *
 * No crash and no sanitizer report is the assertion; a bad input is
 * refused with a message (never exit(3): the parsers return their verdict).
 * Text is cut at its first NUL where C strings take it. Seeds:
 * tests/fuzz-text.seed DIR.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../fuseexport.h"

enum { MAX_ARGS = 64 };

static char source[64];

/* A URI that fails to parse leaves what nbd_parse_uri() and the helpers
 * it calls had decoded in their locals, where the program would have
 * exited: not a leak of the program's (its frame is on every such
 * stack, so its name covers the helpers). (The asprintf() of a
 * relative socket path unwinds no further than libc, so it is named by
 * that: nothing else this harness reaches calls asprintf.) */
const char *__lsan_default_suppressions(void)
{
	return "leak:nbd_parse_uri\nleak:__vasprintf_internal\n";
}

static void fail(const char *what)
{
	fprintf(stderr, "fuzz-text: %s\n", what);
	abort();
}

/* The scratch source of the control FIFO's export, once */
static void setup(void)
{
	char dir[] = "/tmp/fuseexport-fuzz-text.XXXXXX";
	FILE *f;

	if (*source)
		return;
	if (!mkdtemp(dir))
		fail("mkdtemp");
	snprintf(source, sizeof(source), "%s/src", dir);
	f = fopen(source, "w");
	if (!f || ftruncate(fileno(f), 1 << 20) < 0 || fclose(f))
		fail("the scratch source");
}

/* data as a C string (cut at a NUL), malloc'ed */
static char *text(const uint8_t *data, size_t size)
{
	char *s = strndup((const char *)data, size);

	if (!s)
		fail("malloc");
	return s;
}

static void control(const uint8_t *data, size_t size)
{
	char arg_source[64], *argv[] = { "fuseexport", "-w", "--cache=none",
		"--write-cache=volatile", "--control=/nonexistent/ctl", "--seed=1",
		arg_source, "/nonexistent/mp", NULL };
	struct export *e;

	setup();
	snprintf(arg_source, sizeof(arg_source), "%s", source);
	e = fuseexport_new(8, argv);
	fuseexport_fuzz_control(e, (const char *)data + 1, size ? size - 1 : 0,
				size ? data[0] : 0);
	fuseexport_free(e);
}

/* The rest split at NUL bytes into argv after argv0 */
static void command_line(const char *argv0, const uint8_t *data, size_t size)
{
	char *copy = malloc(size + 1), *argv[MAX_ARGS + 2], why[512];
	size_t i, start = 0;
	int argc = 0, r;

	if (!copy)
		fail("malloc");
	memcpy(copy, data, size);
	copy[size] = 0;
	argv[argc++] = (char *)argv0;
	for (i = 0; i <= size && argc <= MAX_ARGS; i++)
		if (!copy[i]) {
			argv[argc++] = copy + start;
			start = i + 1;
		}
	argv[argc] = NULL;
	r = fuseexport_fuzz_options(argc, argv, why);
	if (r < 0 || r > 3)
		fail("fuseexport_fuzz_options: a verdict out of range");
	if (r == 1 && !*why)	/* (an argument holding a newline is quoted as is) */
		fail("a refusal that says nothing");
	free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s;

	if (size < 1)
		return 0;
	switch (data[0] % 6) {
	case 0:
		control(data + 1, size - 1);
		break;
	case 1:
		s = text(data + 1, size - 1);
		fuseexport_fuzz_rule(s);
		free(s);
		break;
	case 2:
		s = text(data + 1, size - 1);
		fuseexport_fuzz_uri(s);
		free(s);
		break;
	case 3:
		command_line("fuseexport", data + 1, size - 1);
		break;
	case 4:
		command_line("/sbin/mount.fuseexport", data + 1, size - 1);
		break;
	case 5:
		if (fuseexport_fuzz_mountinfo((const char *)data + 1, size - 1,
					      "/mnt/x") < 0)
			fail("fmemopen");
		break;
	}
	return 0;
}
