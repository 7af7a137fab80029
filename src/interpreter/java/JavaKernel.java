// The Java kernel of the code-interpreter server: the JDK's JShell, run in this JVM (local
// execution), so that declarations stay between cells. Started by java-kernel.ts as a
// single-file program. Requests arrive on stdin as lines `<token> <base64 code>`; each reply
// (the last expression's value or the error) goes back as a JSON line on fd 3, then the end
// markers (\x1e<token>\x1e) on stdout and stderr, after everything the cell printed.
// A SIGINT stops the running cell; the kernel keeps its state.

import java.io.BufferedReader;
import java.io.ByteArrayInputStream;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.lang.reflect.Field;
import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.List;
import java.util.Map;
import java.util.function.BiConsumer;
import java.util.stream.Collectors;
import jdk.jshell.Diag;
import jdk.jshell.EvalException;
import jdk.jshell.JShell;
import jdk.jshell.JShellException;
import jdk.jshell.Snippet;
import jdk.jshell.SnippetEvent;
import jdk.jshell.SourceCodeAnalysis;
import jdk.jshell.UnresolvedReferenceException;

public class JavaKernel {
    private static final String SEP = "\u001e";
    /** jshell's own default imports. */
    private static final String[] IMPORTS = {
        "java.io.*", "java.math.*", "java.net.*", "java.nio.file.*", "java.util.*", "java.util.concurrent.*",
        "java.util.function.*", "java.util.prefs.*", "java.util.regex.*", "java.util.stream.*",
    };

    private static JShell shell;
    /** Whether the running cell was interrupted. */
    private static volatile boolean stopped;

    public static void main(String[] args) throws Exception {
        BufferedReader requests = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        System.setIn(new ByteArrayInputStream(new byte[0])); // cells read no input, as upstream's
        PrintStream control = new PrintStream(new FileOutputStream(fd(3)), true, StandardCharsets.UTF_8);
        // cells set real environment variables (System.getenv, child processes) through this hook
        System.getProperties().put("cubebox.setenv", (BiConsumer<String, String>) JavaKernel::setenv);
        shell = JShell.builder().executionEngine("local").build();
        for (String i : IMPORTS) shell.eval("import " + i + ";");
        sun.misc.Signal.handle(new sun.misc.Signal("INT"), s -> {
            stopped = true;
            shell.stop();
        });
        String line;
        while ((line = requests.readLine()) != null) {
            int space = line.indexOf(' ');
            String token = line.substring(0, space);
            String code = new String(Base64.getDecoder().decode(line.substring(space + 1)), StandardCharsets.UTF_8);
            String reply;
            stopped = false;
            try {
                reply = run(code);
            } catch (Throwable t) {
                reply = error(t.getClass().getName(), String.valueOf(t.getMessage()), t.toString());
            }
            if (stopped && !reply.startsWith("\"error\"")) reply = error("KeyboardInterrupt", "Execution interrupted", "");
            System.out.flush();
            System.err.flush();
            control.println("{\"token\":" + json(token) + (reply.isEmpty() ? "" : "," + reply) + "}");
            System.out.print(SEP + token + SEP);
            System.out.flush();
            System.err.print(SEP + token + SEP);
            System.err.flush();
        }
    }

    /** Runs a cell snippet by snippet; answers the reply's result or error fields, or "". */
    private static String run(String code) {
        SourceCodeAnalysis analysis = shell.sourceCodeAnalysis();
        String rest = code;
        String value = null;
        while (!rest.isBlank() && !stopped) {
            SourceCodeAnalysis.CompletionInfo info = analysis.analyzeCompletion(rest);
            String source = info.completeness().isComplete() ? info.source() : rest;
            rest = info.completeness().isComplete() ? info.remaining() : "";
            value = null;
            for (SnippetEvent e : shell.eval(source)) {
                if (e.causeSnippet() != null) continue; // a dependent snippet updated
                if (e.status() == Snippet.Status.REJECTED) return compileError(e.snippet());
                if (e.exception() != null) return exception(e.exception());
                if (e.value() != null && isValue(e.snippet())) value = display(e.snippet(), e.value());
            }
        }
        return value == null ? "" : "\"result\":{\"text/plain\":" + json(value) + "}";
    }

    /** An expression (jshell names its value $N) rather than a declaration or a statement. */
    private static boolean isValue(Snippet s) {
        return s.kind() == Snippet.Kind.EXPRESSION
                || (s.kind() == Snippet.Kind.VAR && s.subKind() == Snippet.SubKind.TEMP_VAR_EXPRESSION_SUBKIND);
    }

    /** A String's value as the string itself (jshell shows its literal); others as jshell shows them. */
    private static String display(Snippet s, String value) {
        String type = s instanceof jdk.jshell.VarSnippet ? ((jdk.jshell.VarSnippet) s).typeName() : "";
        if (s instanceof jdk.jshell.ExpressionSnippet) type = ((jdk.jshell.ExpressionSnippet) s).typeName();
        if ((type.equals("String") || type.equals("java.lang.String")) && value.length() >= 2 && value.startsWith("\"")) {
            return unescape(value.substring(1, value.length() - 1));
        }
        return value;
    }

    private static String compileError(Snippet s) {
        List<Diag> diags = shell.diagnostics(s).collect(Collectors.toList());
        String value = diags.stream().map(d -> d.getMessage(null)).collect(Collectors.joining("\n"));
        StringBuilder tb = new StringBuilder();
        for (Diag d : diags) {
            tb.append(d.getMessage(null)).append('\n');
            int start = (int) d.getStartPosition(), end = (int) d.getEndPosition();
            String src = s.source();
            if (start >= 0 && end >= start && end <= src.length()) tb.append("    ").append(src.substring(start, Math.max(end, start)).strip()).append('\n');
        }
        return error("CompilationException", value.isEmpty() ? "the snippet does not compile" : value, tb.toString());
    }

    private static String exception(JShellException ex) {
        if (ex instanceof UnresolvedReferenceException) {
            Snippet s = ((UnresolvedReferenceException) ex).getSnippet();
            return error("UnresolvedReferenceException", "'" + s.source().strip() + "' refers to something not yet defined", "");
        }
        String name = ex instanceof EvalException ? ((EvalException) ex).getExceptionClassName() : ex.getClass().getName();
        StringBuilder tb = new StringBuilder(name).append(": ").append(ex.getMessage() == null ? "" : ex.getMessage()).append('\n');
        for (StackTraceElement el : ex.getStackTrace()) tb.append("\tat ").append(el).append('\n');
        return error(name, ex.getMessage() == null ? "" : ex.getMessage(), tb.toString());
    }

    private static String error(String name, String value, String traceback) {
        return "\"error\":{\"name\":" + json(name) + ",\"value\":" + json(value) + ",\"traceback\":" + json(traceback) + "}";
    }

    /** Sets (value) or unsets (null) a variable of this process's environment, as System.getenv sees it. */
    @SuppressWarnings("unchecked")
    private static void setenv(String name, String value) {
        try {
            Class<?> pe = Class.forName("java.lang.ProcessEnvironment");
            Field f = pe.getDeclaredField("theUnmodifiableEnvironment");
            f.setAccessible(true);
            Object unmodifiable = f.get(null);
            Field inner = unmodifiable.getClass().getDeclaredField("m");
            inner.setAccessible(true);
            Map<String, String> env = (Map<String, String>) inner.get(unmodifiable);
            if (value == null) env.remove(name);
            else env.put(name, value);
        } catch (ReflectiveOperationException | RuntimeException e) {
            System.err.println("cubebox: cannot set environment variable " + name + ": " + e);
        }
    }

    private static FileDescriptor fd(int n) throws ReflectiveOperationException {
        FileDescriptor d = new FileDescriptor();
        Field f = FileDescriptor.class.getDeclaredField("fd");
        f.setAccessible(true);
        f.setInt(d, n);
        return d;
    }

    private static String json(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20 || c > 0x7e) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    /** A Java string literal's body back to its characters. */
    private static String unescape(String s) {
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c != '\\' || i + 1 == s.length()) {
                b.append(c);
                continue;
            }
            char n = s.charAt(++i);
            switch (n) {
                case 'n': b.append('\n'); break;
                case 't': b.append('\t'); break;
                case 'r': b.append('\r'); break;
                case 'b': b.append('\b'); break;
                case 'f': b.append('\f'); break;
                case '0': b.append('\0'); break;
                case 'u':
                    if (i + 4 < s.length()) {
                        b.append((char) Integer.parseInt(s.substring(i + 1, i + 5), 16));
                        i += 4;
                    }
                    break;
                default: b.append(n);
            }
        }
        return b.toString();
    }
}
