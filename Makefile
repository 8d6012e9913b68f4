# fuseexport: a C compiler and libc headers are all the build needs.
PREFIX = /usr/local
BINDIR = $(PREFIX)/sbin
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

# the request handler under hostile bytes: libFuzzer where clang has it,
# else a plain driver; either fails on a crash or sanitizer report
FUZZ_SECONDS = 60
SANITIZE = -fsanitize=address,undefined -fno-sanitize-recover=all -g -O1
FUZZ_SRC = tests/fuzz.c fuseexport.c
fuzz: $(FUZZ_SRC) fuseexport.h
	rm -rf tests/fuzz-corpus && mkdir tests/fuzz-corpus
	$(CC) -g -O1 -DFUZZ_DRIVER -DFUSEEXPORT_NO_MAIN -o tests/fuzz-driver $(FUZZ_SRC) -pthread
	tests/fuzz-driver --corpus tests/fuzz-corpus --seconds 0
	if clang -fsanitize=fuzzer $(SANITIZE) -DFUSEEXPORT_NO_MAIN \
		-o tests/fuzz-libfuzzer $(FUZZ_SRC) -pthread 2>/dev/null; then \
		tests/fuzz-libfuzzer -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
			-artifact_prefix=tests/ tests/fuzz-corpus; \
	else \
		$(CC) $(SANITIZE) -DFUZZ_DRIVER -DFUSEEXPORT_NO_MAIN \
			-o tests/fuzz-driver $(FUZZ_SRC) -pthread && \
		tests/fuzz-driver --seconds $(FUZZ_SECONDS); \
	fi

# the whole suite against an ASan+UBSan build; the detached servers'
# reports go to tests/asan-logs, and any there fails the run
asan: fuseexport.c fuseexport.h
	$(CC) $(SANITIZE) -o fuseexport-asan fuseexport.c -pthread
	rm -rf tests/asan-logs && mkdir tests/asan-logs
	ASAN_OPTIONS=detect_leaks=0:log_path=$(CURDIR)/tests/asan-logs/asan \
	UBSAN_OPTIONS=print_stacktrace=1:log_path=$(CURDIR)/tests/asan-logs/ubsan \
		FUSEEXPORT=./fuseexport-asan ./test.sh
	@if ls tests/asan-logs | grep -q .; then cat tests/asan-logs/*; exit 1; fi

# fio side by side: the file, fuseexport in each mode, qemu-storage-daemon
bench: fuseexport
	tests/bench.sh

install: fuseexport
	install -D -m 755 fuseexport $(DESTDIR)$(BINDIR)/fuseexport
	install -D -m 644 fuseexport.1 $(DESTDIR)$(MANDIR)/man1/fuseexport.1
	ln -sf fuseexport $(DESTDIR)$(BINDIR)/mount.fuseexport
	ln -sf fuseexport $(DESTDIR)$(BINDIR)/mount.fuse.fuseexport

clean:
	rm -f fuseexport fuseexport-static fuseexport-static-* fuseexport-asan tests/fuzz-driver tests/fuzz-libfuzzer
	rm -rf tests/fuzz-corpus tests/asan-logs

.PHONY: all static test test-arch fuzz asan bench install clean
