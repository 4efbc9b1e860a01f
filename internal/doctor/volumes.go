package doctor

import (
	"encoding/json"
	"fmt"
	"io"
)

// Volume is one configured volume (store.volumes) to check: its checks are
// those of a mail root, run on the volume's path with its own marker.
type Volume struct {
	Name        string
	Path        string
	MountMarker string
}

// VolumesReport is the outcome of RunVolumes: one Report per volume.
type VolumesReport struct {
	Status  Status         `json:"status"` // the worst status of all volumes
	Volumes []VolumeReport `json:"volumes"`
}

// VolumeReport is the report of one volume.
type VolumeReport struct {
	Volume string `json:"volume"`
	*Report
}

// RunVolumes runs every check on each volume in turn (its mount options,
// marker, space, probes and host claim: each filer is its own file
// system). o.MailRoot and o.MountMarker are replaced by each volume's.
func RunVolumes(o Options, vols []Volume) *VolumesReport {
	r := &VolumesReport{}
	for _, v := range vols {
		vo := o
		vo.MailRoot, vo.MountMarker = v.Path, v.MountMarker
		rep := Run(vo)
		r.Volumes = append(r.Volumes, VolumeReport{Volume: v.Name, Report: rep})
		r.Status = max(r.Status, rep.Status)
	}
	return r
}

// Count returns how many checks of all volumes have status s.
func (r *VolumesReport) Count(s Status) int {
	n := 0
	for _, v := range r.Volumes {
		n += v.Count(s)
	}
	return n
}

// WriteText writes each volume's table under a "volume NAME" heading,
// then one summary line.
func (r *VolumesReport) WriteText(w io.Writer) error {
	for _, v := range r.Volumes {
		fmt.Fprintf(w, "== volume %s\n", v.Volume)
		if err := v.Report.WriteText(w); err != nil {
			return err
		}
		fmt.Fprintln(w)
	}
	_, err := fmt.Fprintf(w, "all volumes: %s: %d failed, %d warnings, %d ok\n", r.Status, r.Count(FAIL), r.Count(WARN), r.Count(OK))
	return err
}

// WriteJSON writes the report as one indented JSON object.
func (r *VolumesReport) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
