/* fuzz-main.c - a plain driver for the fuzz harnesses, where clang has no
 * libFuzzer
 *
 * Linked with one tests/fuzz-NAME.c (which defines LLVMFuzzerTestOneInput
 * and may define LLVMFuzzerInitialize) and built under ASan and UBSan, it
 * takes the arguments libFuzzer takes, so tests/fuzz.sh runs either the
 * same way:
 *
 *   fuzz-NAME [-max_total_time=N] [-timeout=N] [-seed=N] [-max_len=N]
 *             [-artifact_prefix=P] DIR|FILE...
 *
 * Files are replayed once each and nothing else is done, as libFuzzer does
 * with files. Directories are a corpus: every file in them is run, then
 * inputs mutated from them (bit flips, interesting integers, bytes
 * inserted, erased, copied or spliced from another input) are run for
 * max_total_time seconds. Unlike libFuzzer it keeps no coverage, so it adds
 * nothing to the corpus. An input that crashes the harness (a sanitizer
 * report, a signal, abort, or running past -timeout seconds) is written
 * to P + "crash-" + the process's ID before the process dies. Other
 * libFuzzer flags are taken and ignored.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));
void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

static struct input { uint8_t *data; size_t size; } *corpus;
static size_t ncorpus, max_len = 1 << 20;
static unsigned timeout = 60;

/* the input being run, for the crash handlers */
static const uint8_t *current;
static size_t current_size;
static char crash_path[4096];

static void die(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz-main: %s%s%s\n", what, detail ? ": " : "",
		detail ? detail : "");
	exit(2);
}

/* Write the input that is running to crash_path; async-signal-safe */
static void save_crash(void)
{
	int fd;

	if (!current)
		return;
	fd = open(crash_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd >= 0) {
		if (write(fd, current, current_size) == (ssize_t)current_size) {
			write(2, "fuzz-main: the input is in ", 27);
			write(2, crash_path, strlen(crash_path));
			write(2, "\n", 1);
		}
		close(fd);
	}
	current = NULL;
}

static void on_signal(int sig)
{
	save_crash();
	if (sig == SIGALRM) {
		write(2, "fuzz-main: an input ran past -timeout\n", 38);
		sig = SIGABRT;
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

static void run(const uint8_t *data, size_t size)
{
	current = data;
	current_size = size;
	alarm(timeout);
	LLVMFuzzerTestOneInput(data, size);
	alarm(0);
	current = NULL;
}

/* Read the file at path; returns it in a malloc'd buffer, or NULL if it is
 * not a regular file */
static uint8_t *read_file(const char *path, size_t *size)
{
	struct stat st;
	uint8_t *buf;
	FILE *f = fopen(path, "r");

	if (!f)
		die("cannot open", path);
	if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
		fclose(f);
		return NULL;
	}
	buf = malloc(st.st_size + 1);
	if (!buf)
		die("out of memory", NULL);
	*size = fread(buf, 1, st.st_size, f);
	fclose(f);
	return buf;
}

static void add_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char path[4096];

	if (!d)
		die("cannot open", dir);
	while ((de = readdir(d))) {
		struct input in;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		in.data = read_file(path, &in.size);
		if (!in.data)
			continue;
		corpus = realloc(corpus, (ncorpus + 1) * sizeof(*corpus));
		if (!corpus)
			die("out of memory", NULL);
		corpus[ncorpus++] = in;
	}
	closedir(d);
}

static uint64_t next;

/* xorshift64*: the same run for the same -seed */
static uint64_t rnd(uint64_t below)
{
	next ^= next >> 12;
	next ^= next << 25;
	next ^= next >> 27;
	return below ? (next * 0x2545f4914f6cdd1dULL >> 11) % below : 0;
}

/* Mutate buf (size bytes of cap) in place; returns the new size */
static size_t mutate(uint8_t *buf, size_t size, size_t cap)
{
	static const uint64_t interesting[] = {
		0, 1, 2, 0x7f, 0x80, 0xff, 511, 512, 4095, 4096, 65535, 65536,
		131072, 1 << 20, 0x7fffffff, 0x80000000, 0xffffffff,
		0x7fffffffffffffffULL, 0xffffffffffffffffULL,
	};
	int edits = 1 + rnd(8);

	while (edits--) {
		size_t at = rnd(size + 1), n = 1 + rnd(64), k;
		const struct input *other;
		uint64_t v;

		switch (rnd(9)) {
		case 0:			/* flip a bit */
			if (at < size)
				buf[at] ^= 1 << rnd(8);
			break;
		case 1:			/* a random byte */
			if (at < size)
				buf[at] = rnd(256);
			break;
		case 2: case 3:		/* an interesting integer, 1 to 8 bytes,
					 * either byte order */
			k = 1 << rnd(4);
			v = interesting[rnd(sizeof(interesting) / sizeof(*interesting))];
			if (rnd(2))
				v = -v;
			for (size_t i = 0; i < k && at + i < size; i++)
				buf[at + i] = rnd(2) ? v >> 8 * i : v >> 8 * (k - 1 - i);
			break;
		case 4:			/* cut the end off */
			size = at;
			break;
		case 5:			/* erase n bytes */
			if (at + n <= size) {
				memmove(buf + at, buf + at + n, size - at - n);
				size -= n;
			}
			break;
		case 6:			/* insert n random bytes */
			if (size + n <= cap) {
				memmove(buf + at + n, buf + at, size - at);
				for (k = 0; k < n; k++)
					buf[at + k] = rnd(256);
				size += n;
			}
			break;
		case 7:			/* copy n bytes from elsewhere in it */
			if (size && at + n <= size) {
				k = rnd(size - n + 1);
				memmove(buf + at, buf + k, n);
			}
			break;
		case 8:			/* splice: the rest from another input */
			other = &corpus[rnd(ncorpus)];
			k = rnd(other->size + 1);
			n = other->size - k;
			if (at + n > cap)
				n = cap - at;
			memcpy(buf + at, other->data + k, n);
			size = at + n;
			break;
		}
	}
	return size;
}

int main(int argc, char *argv[])
{
	unsigned long seconds = 0, runs = 0, files = 0;
	const char *prefix = "./";
	uint8_t *buf;
	time_t end;
	int i;

	next = time(NULL) ^ getpid();
	if (LLVMFuzzerInitialize)
		LLVMFuzzerInitialize(&argc, &argv);
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strncmp(a, "-max_total_time=", 16))
			seconds = strtoul(a + 16, NULL, 10);
		else if (!strncmp(a, "-timeout=", 9))
			timeout = strtoul(a + 9, NULL, 10);
		else if (!strncmp(a, "-seed=", 6))
			next = strtoull(a + 6, NULL, 10);
		else if (!strncmp(a, "-max_len=", 9))
			max_len = strtoul(a + 9, NULL, 10);
		else if (!strncmp(a, "-artifact_prefix=", 17))
			prefix = a + 17;
	}
	if (!next)
		next = 1;
	printf("fuzz-main: seed %llu\n", (unsigned long long)next);
	snprintf(crash_path, sizeof(crash_path), "%scrash-%d", prefix, (int)getpid());
	signal(SIGABRT, on_signal);
	signal(SIGSEGV, on_signal);
	signal(SIGBUS, on_signal);
	signal(SIGFPE, on_signal);
	signal(SIGALRM, on_signal);
	if (__sanitizer_set_death_callback)
		__sanitizer_set_death_callback(save_crash);

	for (i = 1; i < argc; i++) {	/* files given: replay those only */
		struct stat st;
		size_t size;

		if (argv[i][0] == '-' || stat(argv[i], &st) < 0 || S_ISDIR(st.st_mode))
			continue;
		buf = read_file(argv[i], &size);
		if (buf) {
			run(buf, size);
			free(buf);
			files++;
		}
	}
	if (files) {
		printf("fuzz-main: %lu inputs replayed, no failure\n", files);
		return 0;
	}
	for (i = 1; i < argc; i++)
		if (argv[i][0] != '-')
			add_dir(argv[i]);
	for (size_t k = 0; k < ncorpus; k++, runs++) {
		if (corpus[k].size > max_len)
			corpus[k].size = max_len;
		run(corpus[k].data, corpus[k].size);
	}
	buf = malloc(max_len);
	if (!buf)
		die("out of memory", NULL);
	for (end = time(NULL) + seconds; ncorpus && time(NULL) < end; runs++) {
		const struct input *in = &corpus[rnd(ncorpus)];

		memcpy(buf, in->data, in->size);
		run(buf, mutate(buf, in->size, max_len));
	}
	printf("fuzz-main: %lu executions (%zu from the corpus) in %lu s, no failure\n",
	       runs, ncorpus, seconds);
	free(buf);
	while (ncorpus)
		free(corpus[--ncorpus].data);
	free(corpus);
	return 0;
}
