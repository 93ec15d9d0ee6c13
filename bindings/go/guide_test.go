package prefork_test

import (
	"os"
	"strings"
	"testing"
)

// The migration guide's code (README.md) is the example programs': the "before" program
// verbatim from its package clause on, and each diff a true one between two of the files (its
// context and removed lines, in order, in the first; its context and added lines, in order, in
// the second). The programs themselves are built and run by TestMigrationExamples.
func TestMigrationGuideMatchesTheExamples(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	guide, ok := strings.CutPrefix(string(readme)[strings.Index(string(readme), "## Migrating from fasthttp prefork"):], "## Migrating")
	if !ok {
		t.Fatal("README.md has no migration guide")
	}
	guide, _, _ = strings.Cut(guide, "\n## ")
	lines := func(path string) []string {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	}
	// isSubsequence reports whether want appears in have, in order.
	isSubsequence := func(want, have []string) bool {
		i := 0
		for _, h := range have {
			if i < len(want) && h == want[i] {
				i++
			}
		}
		return i == len(want)
	}
	var goBlocks, diffs int
	for _, block := range strings.Split(guide, "```")[1:] {
		kind, text, _ := strings.Cut(block, "\n")
		switch kind {
		case "go":
			goBlocks++
			src := strings.Join(lines("examples/migrate-fasthttp/before/main.go"), "\n")
			if _, body, _ := strings.Cut(src, "\npackage "); "package "+body != strings.TrimRight(text, "\n") {
				t.Errorf("the guide's \"before\" program is not examples/migrate-fasthttp/before/main.go:\n%s", text)
			}
		case "diff":
			diffs++
			rows := strings.Split(strings.TrimRight(text, "\n"), "\n")
			from, okFrom := strings.CutPrefix(rows[0], "--- ")
			to, okTo := strings.CutPrefix(rows[1], "+++ ")
			if !okFrom || !okTo {
				t.Fatalf("a diff without its --- and +++ lines:\n%s", text)
			}
			var old, new []string
			for _, r := range rows[2:] {
				switch {
				case r == "@@":
				case r == "":
					old, new = append(old, ""), append(new, "")
				case r[0] == ' ':
					old, new = append(old, r[1:]), append(new, r[1:])
				case r[0] == '-':
					old = append(old, r[1:])
				case r[0] == '+':
					new = append(new, r[1:])
				default:
					t.Errorf("diff %s -> %s: a line that is no diff line: %q", from, to, r)
				}
			}
			if !isSubsequence(old, lines(from)) || !isSubsequence(new, lines(to)) {
				t.Errorf("the guide's diff %s -> %s is not a diff of those files", from, to)
			}
		}
	}
	if goBlocks != 1 || diffs != 3 {
		t.Errorf("the guide has %d go blocks and %d diffs, want 1 and 3", goBlocks, diffs)
	}
}
