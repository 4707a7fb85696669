// Command luahealth runs an Argo CD health check (health.lua) on one Kubernetes object the
// way Argo CD does, and prints the health it returns as JSON ({"status": ..., "message": ...}).
//
//	luahealth [-open-libs] [-controller] health.lua < object.json
//
// The Lua VM is set up as in Argo CD's util/lua/lua.go (commit 37ee0097cf85, v3.5):
// gopher-lua with SkipOpenLibs unless -open-libs, then the package, base and table libraries
// and Argo CD's "safe" os library (os.time and os.date only) opened in every case, a one
// second deadline, the object in the global `obj` (decoded as Argo CD's decodeValue does),
// and the returned table converted with layeh.com/gopher-json as ExecuteHealthLua does.
//
//   - Without -open-libs the script runs as a `resource.customizations.health.<group>_<kind>`
//     key of argocd-cm does by default (no string, math, io, ... libraries).
//   - With -open-libs it runs as a built-in script of Argo CD's resource_customizations and
//     as Argo CD's own health_test.yaml harness (util/lua/health_test.go) runs it.
//   - -controller first applies what gitops-engine's health.GetResourceHealth does before any
//     script: an object being deleted is "Progressing", "Pending deletion".
//
// The object is read as JSON and decoded with encoding/json, so numbers are float64 as in
// Argo CD's test harness (sigs.k8s.io/yaml); both become Lua numbers either way.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"time"

	lua "github.com/yuin/gopher-lua"
	luajson "layeh.com/gopher-json"
)

// HealthStatus is gitops-engine's pkg/health.HealthStatus.
type HealthStatus struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
}

const hookFinalizer = "argocd.argoproj.io/hook-finalizer"

var validStatus = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true,
	"Missing": true,
}

func main() {
	openLibs := flag.Bool("open-libs", false, "open Lua's standard libraries (built-in scripts)")
	controller := flag.Bool("controller", false, "apply gitops-engine's deletion rule first")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: luahealth [-open-libs] [-controller] health.lua < object.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fail(err)
	}
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	obj := map[string]any{}
	if err := json.Unmarshal(raw, &obj); err != nil {
		fail(fmt.Errorf("the object on stdin is not JSON: %w", err))
	}
	var result *HealthStatus
	if *controller && deleting(obj) {
		result = &HealthStatus{Status: "Progressing", Message: "Pending deletion"}
	} else {
		result, err = executeHealthLua(obj, string(script), *openLibs)
		if err != nil {
			fail(err)
		}
	}
	out, err := json.Marshal(result)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "luahealth:", err)
	os.Exit(1)
}

// deleting: gitops-engine's `obj.GetDeletionTimestamp() != nil && !hook.HasHookFinalizer(obj)`.
func deleting(obj map[string]any) bool {
	meta, _ := obj["metadata"].(map[string]any)
	if ts, _ := meta["deletionTimestamp"].(string); ts == "" {
		return false
	}
	finalizers, _ := meta["finalizers"].([]any)
	for _, f := range finalizers {
		if f == hookFinalizer {
			return false
		}
	}
	return true
}

// runLua is Argo CD's VM.runLuaWithResourceActionParameters without action parameters.
func runLua(obj map[string]any, script string, useOpenLibs bool) (*lua.LState, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !useOpenLibs})
	for _, pair := range []struct {
		n string
		f lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, OpenSafeOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(pair.f), NRet: 0, Protect: true},
			lua.LString(pair.n)); err != nil {
			panic(err)
		}
	}
	l.PreloadModule(lua.OsLibName, SafeOsLoader)
	ctx, cancel := context.WithTimeout(context.Background(), 1*time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("actionParams", l.CreateTable(0, 0))
	l.SetGlobal("obj", decodeValue(l, obj))
	fn, err := l.LoadString(script)
	if err == nil {
		l.Push(fn)
		err = l.PCall(0, lua.MultRet, nil)
	}
	var apiErr *lua.ApiError
	if errors.As(err, &apiErr) && apiErr.Type == lua.ApiErrorRun {
		apiErr.StackTrace = ""
		err = apiErr
	}
	return l, err
}

// executeHealthLua is Argo CD's VM.ExecuteHealthLua.
func executeHealthLua(obj map[string]any, script string, useOpenLibs bool) (*HealthStatus, error) {
	l, err := runLua(obj, script, useOpenLibs)
	defer l.Close()
	if err != nil {
		return nil, err
	}
	returnValue := l.Get(-1)
	switch returnValue.Type() {
	case lua.LTTable:
		jsonBytes, err := luajson.Encode(returnValue)
		if err != nil {
			return nil, err
		}
		healthStatus := &HealthStatus{}
		if err := json.Unmarshal(jsonBytes, healthStatus); err != nil {
			typeError := &json.UnmarshalTypeError{Value: "array", Type: reflect.TypeFor[*HealthStatus]()}
			if errors.As(err, &typeError) {
				return &HealthStatus{}, nil
			}
			return nil, err
		}
		if !validStatus[healthStatus.Status] {
			return &HealthStatus{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
		}
		return healthStatus, nil
	case lua.LTNil:
		return &HealthStatus{}, nil
	}
	return nil, fmt.Errorf("expect table output from Lua script, not %s", returnValue.Type().String())
}

// decodeValue is Argo CD's decodeValue (util/lua/lua.go).
func decodeValue(l *lua.LState, value any) lua.LValue {
	switch converted := value.(type) {
	case bool:
		return lua.LBool(converted)
	case float64:
		return lua.LNumber(converted)
	case string:
		return lua.LString(converted)
	case json.Number:
		return lua.LString(converted)
	case int:
		return lua.LNumber(converted)
	case int32:
		return lua.LNumber(converted)
	case int64:
		return lua.LNumber(converted)
	case []any:
		arr := l.CreateTable(len(converted), 0)
		for _, item := range converted {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(converted))
		for key, item := range converted {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	case nil:
		return lua.LNil
	}
	return lua.LNil
}
