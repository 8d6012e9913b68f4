# fuseexport: a C compiler and libc headers are all the build needs.
PREFIX = /usr/local
BINDIR = $(PREFIX)/bin
# mount(8) runs a helper mount.TYPE from /sbin alone, whatever the prefix
SBINDIR = /sbin
MANDIR = $(PREFIX)/share/man
CC = cc
CFLAGS = -O2 -g -Wall -Wextra
LDFLAGS =
LDLIBS = -pthread
MUSLCC = musl-gcc

all: fuseexport

fuseexport: fuseexport.c fuseexport.h
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ fuseexport.c $(LDLIBS)

# a stripped static binary for rescue shells and initramfs, for ARCH
# (x86_64, aarch64, armhf, riscv64, s390x, i386): with musl where its
# musl-gcc.specs is there (Debian 12's multiarch musl-dev:ARCH beside the
# cross gcc; riscv64's is Debian 13's, unpacked into FX_ARCH_CACHE), else
# glibc, whose static getaddrinfo reads /etc/hosts and DNS but no other NSS
# module (ld warns of that). tests/arch-deps.sh installs all of them.
ARCH = x86_64
FX_ARCH_CACHE = /var/cache/fuseexport-arch
CROSS_aarch64 = aarch64-linux-gnu-
CROSS_armhf = arm-linux-gnueabihf-
CROSS_riscv64 = riscv64-linux-gnu-
CROSS_s390x = s390x-linux-gnu-
CROSS_i386 = i686-linux-gnu-
MUSL_SPECS_aarch64 = /usr/lib/aarch64-linux-musl/musl-gcc.specs
MUSL_SPECS_armhf = /usr/lib/arm-linux-musleabihf/musl-gcc.specs
MUSL_SPECS_s390x = /usr/lib/s390x-linux-musl/musl-gcc.specs
MUSL_SPECS_i386 = /usr/lib/i386-linux-musl/musl-gcc.specs
MUSL_SPECS_riscv64 = $(FX_ARCH_CACHE)/musl-riscv64/musl-gcc.specs
static_cc = $(CROSS_$(1))gcc $(if $(wildcard $(MUSL_SPECS_$(1))),-specs $(MUSL_SPECS_$(1)))
static: fuseexport-static$(if $(filter x86_64,$(ARCH)),,-$(ARCH))
fuseexport-static: fuseexport.c fuseexport.h
	$(MUSLCC) -DFUSEEXPORT_STATIC -static -Os -Wall -Wextra -o $@ fuseexport.c
	strip $@
fuseexport-static-%: fuseexport.c fuseexport.h
	@[ -n "$(CROSS_$*)" ] || { echo "ARCH=$*: not one of x86_64 aarch64 armhf riscv64 s390x i386" >&2; exit 1; }
	$(call static_cc,$*) -DFUSEEXPORT_STATIC -static -Os -Wall -Wextra -Wno-psabi -o $@ fuseexport.c -pthread
	$(CROSS_$*)strip $@

test: fuseexport
	./test.sh

# the rescue cases on each architecture's own Debian kernel under qemu-system
# (tests/arch.sh): ARCH=TARGET runs one (x86_64: both older kernels), no
# ARCH every one
ARCH_TARGETS = aarch64 aarch64-16k armhf riscv64 s390x i386 x86_64-6.1 x86_64-5.10
test-arch:
	@rc=0; for t in $(if $(filter command line environment,$(origin ARCH)),$(if \
		$(filter x86_64,$(ARCH)),x86_64-6.1 x86_64-5.10,$(ARCH)),$(ARCH_TARGETS)); do \
		sh tests/arch.sh $$t || rc=1; done; exit $$rc

# every parser of outside bytes under hostile input: each tests/fuzz-NAME.c
# is built under ASan+UBSan as a libFuzzer target where clang has
# -fsanitize=fuzzer, else with the plain driver tests/fuzz-main.c, and
# tests/fuzz.sh runs each for its share of FUZZ_SECONDS; any crash or
# sanitizer report fails the run
FUZZ_SECONDS = 60
SANITIZE = -fsanitize=address,undefined -fno-sanitize-recover=all -g -O1
FUZZ_NAMES = $(filter-out main,$(patsubst tests/fuzz-%.c,%,$(wildcard tests/fuzz-*.c)))
FUZZ_BINS = $(FUZZ_NAMES:%=tests/fuzz-build/%)

tests/fuzz-build/%: tests/fuzz-%.c tests/fuzz-main.c fuseexport.c fuseexport.h
	@mkdir -p tests/fuzz-build
	clang -fsanitize=fuzzer $(SANITIZE) -DFUSEEXPORT_NO_MAIN -o $@ $< fuseexport.c -pthread 2>/dev/null || \
	$(CC) $(SANITIZE) -DFUSEEXPORT_NO_MAIN -o $@ $< tests/fuzz-main.c fuseexport.c -pthread

fuzz: $(FUZZ_BINS)
	tests/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_BINS)

# the whole suite against an ASan+UBSan build; the detached servers'
# reports go to tests/asan-logs, and any there fails the run. Left out of
# both sanitizer runs: the tests whose time goes to something else than
# the sanitized binary: the kernel's TCP timeout, the docs' own commands,
# and the static, 32-bit, valgrind and installed builds of their own.
# Left out of the ASan run also: the tests of a peer slowed on purpose
# (one request at a time, nbdkit's delay filter, a flush held by strace),
# which wait out the peer and run no code the other tests do not (make
# test runs them; TSan, which looks at how threads meet, keeps the NBD
# client's one at a time). Left out of the TSan run: the bad URIs and
# servers, one thread waiting out the handshake's deadline
SLOW_ELSEWHERE = TCP peer gone silent|^docs:|^rescue shell:|^32-bit build|^valgrind:|^make install:
PACED = one request at a time|nbdkit's delay filter|crashed \(plain, torn\) during
asan: fuseexport.c fuseexport.h
	$(CC) $(SANITIZE) -o fuseexport-asan fuseexport.c -pthread
	rm -rf tests/asan-logs && mkdir tests/asan-logs
	ASAN_OPTIONS=detect_leaks=0:log_path=$(CURDIR)/tests/asan-logs/asan \
	UBSAN_OPTIONS=print_stacktrace=1:log_path=$(CURDIR)/tests/asan-logs/ubsan \
		FX_SKIP="$(SLOW_ELSEWHERE)|$(PACED)" FUSEEXPORT=./fuseexport-asan ./test.sh
	@if ls tests/asan-logs | grep -q .; then cat tests/asan-logs/*; exit 1; fi

# the tests of the threaded parts (the queues, the NBD client, the volatile
# cache, the control FIFO, the fault layer) against a ThreadSanitizer build,
# with four queues (TSan makes them 5-15 times slower: a longer timeout);
# the reports go to tests/tsan-logs, and any there fails the run.
# tests/tsan.supp says why each suppression is no race.
TSAN_MODES = -q 4 --passthrough=off --cache=none,-q 4 --passthrough=off --cache=writeback
TSAN_PER_MODE = write in place|fio verify|torture|interrupted mid-request|crash: SIGKILL|server killed
TSAN_LAYERS = fault:|control FIFO|volatile cache|^nbd:|SIGTERM|umount \(and
TSAN_ONLY = $(TSAN_PER_MODE)|$(TSAN_LAYERS)
tsan: fuseexport.c fuseexport.h
	clang -fsanitize=thread -g -O1 -o fuseexport-tsan fuseexport.c -pthread
	rm -rf tests/tsan-logs && mkdir -m 1777 tests/tsan-logs
	TSAN_OPTIONS="log_path=$(CURDIR)/tests/tsan-logs/tsan suppressions=$(CURDIR)/tests/tsan.supp" \
	FX_MODES="$(TSAN_MODES)" FX_LAYER_MODE="-q 4 --passthrough=off" FX_NBD_MODE="-q 4" \
	FX_ONLY="$(TSAN_ONLY)" FX_SKIP="$(SLOW_ELSEWHERE)|^nbd: bad URIs" FX_TIMEOUT=600 \
		FUSEEXPORT=./fuseexport-tsan ./test.sh
	@if ls tests/tsan-logs | grep -q .; then cat tests/tsan-logs/*; exit 1; fi

# fio side by side: the file, fuseexport in each mode, qemu-storage-daemon
bench: fuseexport
	tests/bench.sh

install: fuseexport
	install -D -m 755 fuseexport $(DESTDIR)$(BINDIR)/fuseexport
	install -D -m 644 fuseexport.1 $(DESTDIR)$(MANDIR)/man1/fuseexport.1
	install -d $(DESTDIR)$(SBINDIR)
	ln -sf $(BINDIR)/fuseexport $(DESTDIR)$(SBINDIR)/mount.fuseexport
	ln -sf $(BINDIR)/fuseexport $(DESTDIR)$(SBINDIR)/mount.fuse.fuseexport

clean:
	rm -f fuseexport fuseexport-static fuseexport-static-* fuseexport-asan fuseexport-tsan
	rm -rf tests/fuzz-build tests/asan-logs tests/tsan-logs

.PHONY: all static test test-arch fuzz asan tsan bench install clean
